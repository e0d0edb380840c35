"""Whether this process is the active operator, by kopf peering's own rule, for the parts of the
operator that kopf does not pause: the reconcile loop and the autoscaler run on their own threads.

kopf pauses its watches while another live peer of the same peering object has a higher priority
(or the same one). It does not say so to handlers, so this reads the same peering objects every
few seconds and applies the same rule. A standby never gets a ModelDeployment event, so it never
has anything to reconcile; this matters when a running leader is paused (a replica with a
higher priority joined): it stops, and forgets every body it holds, which kopf's list brings back
fresh if it becomes the leader again."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0
DEFAULT_LIFETIME = 60


def is_alive(info: Mapping[str, Any], now: datetime.datetime) -> bool:
    lastseen = info.get("lastseen")
    if not lastseen:
        return True
    seen = datetime.datetime.fromisoformat(str(lastseen).replace("Z", "+00:00"))
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=datetime.timezone.utc)
    return seen + datetime.timedelta(seconds=int(info.get("lifetime") or DEFAULT_LIFETIME)) > now


def leads(peers: Mapping[str, Any], me: str, priority: int, now: datetime.datetime) -> bool:
    """True unless another live peer has this one's priority or a higher one (kopf pauses then)."""
    for identity, info in peers.items():
        if identity == me or not isinstance(info, Mapping) or not is_alive(info, now):
            continue
        if int(info.get("priority") or 0) >= priority:
            return False
    return True


class PeeringGate:
    """`active` is set while this process leads every peering object it belongs to. `read` returns
    those objects' status maps (None for one that is missing or not served: kopf pauses then too)."""

    def __init__(self, read: Callable[[], Sequence[Mapping[str, Any] | None]], me: str, priority: int,
                 on_pause: Callable[[], None] = lambda: None, interval: float = CHECK_SECONDS) -> None:
        self.read = read
        self.me = me
        self.priority = priority
        self.on_pause = on_pause
        self.interval = interval
        self.active = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, now: datetime.datetime | None = None) -> bool:
        """Read the peers once and open or close the gate; the decision."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        statuses = self.read()
        lead = bool(statuses) and all(s is not None and leads(s, self.me, self.priority, now) for s in statuses)
        if lead and not self.active.is_set():
            log.info("peering: %s leads; reconciling", self.me)
            self.active.set()
        elif not lead and self.active.is_set():
            log.info("peering: another operator leads; %s stops reconciling", self.me)
            self.active.clear()
            self.on_pause()
        return lead

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="peering-gate", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - an API hiccup keeps the last decision until the next read
                log.warning("peering: could not read the peers (%s); keeping the last decision", exc)
            if self._stopping.wait(self.interval):
                return
