"""The worker's /progress endpoint and what the operator reads from it."""

from __future__ import annotations

import requests

from model_operator.controller.reconcile import read_progress
from model_operator.optimize import progress as prog


def test_progress_endpoint_serves_the_workers_position(monkeypatch) -> None:
    state = prog.Progress()
    monkeypatch.setattr(prog, "PROGRESS", state)
    server = prog.serve(0, host="127.0.0.1")
    port = server.server_address[1]
    try:
        state.update(step="candidates (3)", stepNumber=4, steps=8, candidate=1, candidates=3)
        for i in range(5):
            state.candidate_done({"name": f"c{i}", "passed": i % 2 == 0, "latencyMs": 0.1, "recipe": "ignored"})
        got = requests.get(f"http://127.0.0.1:{port}/progress", timeout=5).json()
        assert got["stepNumber"] == 4 and got["candidate"] == 1 and got["elapsedSeconds"] >= 0
        assert [c["name"] for c in got["latest"]] == ["c2", "c3", "c4"] and "recipe" not in got["latest"][0]
        assert requests.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
        monkeypatch.setattr("model_operator.controller.reconcile.PROGRESS_PORT", port)
        pods = [{"labels": {"app.kubernetes.io/component": "optimizer", "job-name": "j"}, "phase": "Running", "podIP": "127.0.0.1"},
                {"labels": {"app.kubernetes.io/component": "triton"}, "phase": "Running", "podIP": "127.0.0.1"}]
        assert read_progress(pods)["j"]["step"] == "candidates (3)" and list(read_progress(pods)) == ["j"]
    finally:
        server.shutdown()
    assert prog.summary(got) == f"step 4/8 candidates 1/3, {got['elapsedSeconds']}s"
