"""`model-operator run`: start kopf with our handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
from typing import Any

import kopf

from ..config import OperatorConfig


def kopf_identity(identity: str) -> Any:
    from kopf._core.engines.peering import Identity  # kopf's NewType over str; not exported at the top

    return Identity(identity)


def main(args: argparse.Namespace) -> int:
    if args.config:
        os.environ["MODEL_OPERATOR_CONFIG"] = args.config
    config = OperatorConfig.load(args.config)
    namespaces = args.namespace or config.namespaces
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import handlers  # noqa: F401  (registers the handlers)

    peering = os.environ.get("MODEL_OPERATOR_PEERING")
    # kopf pauses every peer that shares the highest priority, so replicas need distinct ones;
    # a random one makes whichever replica draws highest the single active operator.
    priority = int(os.environ.get("MODEL_OPERATOR_PRIORITY") or (random.randint(1, 2**31 - 1) if peering else 0))
    # Named here rather than by kopf, so the reconcile loop can find this process among the peers.
    identity = os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}-{random.randint(0, 2**31 - 1):x}"
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(config=config, namespaces=list(namespaces), peering=peering or None, identity=identity, priority=priority),
            standalone=not peering,
            peering_name=peering or None,
            priority=priority,
            identity=kopf_identity(identity),
        )
    )
    return 0
