"""apply → Ready of two source trees side by side in one sitting: `apply_to_ready.py` runs in
tree A and tree B alternately (A, B, A, B, ...), each run on its own fresh test cluster with that
tree's operator and images, and the medians are compared. For "is this change slower than
before": A is an export of the base commit, B the working tree.

    python benchmarks/apply_to_ready_ab.py --base DIR [--runs 2] [--out benchmarks/results/apply-to-ready-ab.md]

DIR must hold the base commit's files with its images built (`hack/build-images.sh` there).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
from harness import log

ROUND = re.compile(r"round \d+/\d+ (\w+): artifact ([\d.]+)s, Ready ([\d.]+)s")
Run = dict[str, tuple[float, float]]  # variant -> (artifact ready, Ready), seconds after the create


def one_run(tree: Path, out: Path) -> Run:
    env = {**os.environ, "PYTHONPATH": str(tree / "operator")}
    proc = subprocess.run([sys.executable, "benchmarks/apply_to_ready.py", "--rounds", "1", "--out", str(out)],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: apply_to_ready.py exited {proc.returncode}: {text[-2000:]}")
    found = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in ROUND.finditer(text)}
    if not found:
        raise RuntimeError(f"{tree}: no round lines in the output: {text[-2000:]}")
    return found


def parse_ab_args(stem: str) -> tuple[argparse.Namespace, dict[str, Path]]:
    """--base DIR, --base-label, --runs and --out (benchmarks/results/<stem>-<date>.md): (the
    arguments, label -> tree with the base first and this checkout as "this tree")."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="a directory with the base commit's files (and its images built)")
    ap.add_argument("--base-label", default="base")
    ap.add_argument("--runs", type=int, default=2, help="runs per tree, alternating")
    harness.add_out(ap, stem)
    args = ap.parse_args()
    if args.base_label == "this tree":
        ap.error("--base-label must differ from 'this tree'")
    return args, {args.base_label: Path(args.base).resolve(), "this tree": harness.REPO}


def main() -> int:
    args, trees = parse_ab_args("apply-to-ready-ab")
    results: dict[str, list[Run]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        for i in range(args.runs):
            for label, tree in trees.items():
                found = one_run(tree, Path(tmp) / f"{label.replace(' ', '-')}-{i}.md")
                results[label].append(found)
                log(f"run {i + 1}/{args.runs} {label}: " + ", ".join(f"{v} Ready {r[1]:.1f}s" for v, r in found.items()))

    base = args.base_label
    lines = harness.header("apply → Ready, two trees side by side", harness.machine_line(*harness.python_and_system()), [
        f"Trees: {base} = {trees[base]}, this tree = {harness.REPO}; each run is `apply_to_ready.py --rounds 1`",
        "(a fresh test cluster, that tree's operator process and images; the digits example, claim store),",
        f"alternating {base}, this tree, ... for {args.runs} runs each; medians of Ready below.",
    ])
    harness.write_result(args.out, lines + ab_table(results))
    return 0


def ab_table(results: dict[str, list[Run]]) -> list[str]:
    """The medians of Ready per variant for the two trees (the base first), their ratio, and
    every run's numbers."""
    def med(label: str, variant: str) -> float:
        return statistics.median(r[variant][1] for r in results[label])

    base, new = list(results)
    lines = ["| variant | " + " | ".join(f"{label} Ready (s)" for label in results) + f" | {new} / {base} |", "|---|---|---|---|"]
    for variant in results[base][0]:
        lines.append(f"| {variant} | {med(base, variant):.1f} | {med(new, variant):.1f} | {med(new, variant) / med(base, variant):.2f} |")
    return lines + ["", "Per run (Ready, s; in brackets: the artifact in status, s): " + "; ".join(
        f"{label} {v} {r[1]:.1f} ({r[0]:.1f})" for label, runs in results.items() for run in runs for v, r in run.items())]


if __name__ == "__main__":
    sys.exit(main())
