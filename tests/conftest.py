"""Makes the test harness in hack/ importable as ``kubetest``."""

import sys
from pathlib import Path

_HACK = str(Path(__file__).resolve().parent.parent / "hack")
if _HACK not in sys.path:
    sys.path.insert(0, _HACK)
