"""Makes the test harness in hack/ importable as ``kubetest``."""

import os
import sys
from pathlib import Path

_HACK = str(Path(__file__).resolve().parent.parent / "hack")
if _HACK not in sys.path:
    sys.path.insert(0, _HACK)

# kopf fixes a timer's interval when model_operator.controller.handlers is first imported, and a
# unit test imports it at collection, before any e2e fixture sets its environment. The in-process
# operators of the e2e tests reconcile every second (as their fixtures say), so that first import
# must see the same setting; processes the tests start get it explicitly.
os.environ.setdefault("MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS", "1")
