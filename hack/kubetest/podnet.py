"""Which addresses the local pod runner hands out as pod IPs.

Two ways, chosen by ``$MODEL_OPERATOR_POD_NETWORK`` (``auto``, the default,
tries the first and falls back to the second):

* ``anyip``: a /22 of 198.18.0.0/16 (half of 198.18.0.0/15, the range set aside for
  network benchmarking, so it clashes with no real network; 198.19.0.0/16 holds the
  cluster's Service range, KWOK's pod range and the real node's) is routed to the loopback
  device as a local range (``ip route add local ... dev lo``). Every address
  in it is then a local address, like 127.0.0.0/8, but the API server accepts
  it in EndpointSlices, so Services select local pods as they would in a real
  cluster. Needs root (CAP_NET_ADMIN); the route is removed at ``down``.
* ``loopback``: a /16 of 127.0.0.0/8. Works unprivileged, but Endpoints and
  EndpointSlice validation rejects loopback addresses, so Services get no
  endpoints for local pods.

``$MODEL_OPERATOR_POD_CIDR`` forces a range (a route is added for it unless
it lies in 127.0.0.0/8).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from typing import Optional

ANYIP_SPACE = ipaddress.ip_network("198.18.0.0/16")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def add_local_route(cidr: str) -> bool:
    return _ip("route", "add", "local", cidr, "dev", "lo").returncode == 0


def remove_local_route(cidr: str) -> None:
    _ip("route", "del", "local", cidr, "dev", "lo")


def _loopback_block() -> str:
    # 127.0.x.y and 127.1.x.y are left alone: hosts files and resolvers use them.
    return f"127.{random.randint(20, 250)}.0.0/16"


def choose(mode: Optional[str] = None) -> tuple[str, bool]:
    """(pod CIDR, whether a local route was added for it and must be removed later)."""
    mode = mode or os.environ.get("MODEL_OPERATOR_POD_NETWORK", "auto")
    forced = os.environ.get("MODEL_OPERATOR_POD_CIDR")
    if forced:
        if ipaddress.ip_network(forced).subnet_of(LOOPBACK):
            return forced, False
        if not add_local_route(forced):
            raise RuntimeError(f"cannot route {forced} to the loopback device (needs root)")
        return forced, True
    if mode in ("auto", "anyip") and os.geteuid() == 0 and shutil.which("ip"):
        blocks = list(ANYIP_SPACE.subnets(new_prefix=22))
        random.shuffle(blocks)
        # A block some other cluster on this machine routed already fails to
        # add ("File exists"), so clusters never share addresses.
        for block in blocks[:16]:
            if add_local_route(str(block)):
                return str(block), True
    if mode == "anyip":
        raise RuntimeError("MODEL_OPERATOR_POD_NETWORK=anyip needs root and the ip tool")
    return _loopback_block(), False
