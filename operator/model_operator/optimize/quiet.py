"""Keep library chatter (exporter banners, deprecation warnings, ONNX Runtime logs) off the
worker's stdout/stderr, where only progress lines and the final error line belong."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

log = logging.getLogger("model_operator.optimize")


def silence_libraries() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHDYNAMO_VERBOSE", "0")
    for name in ("torch", "torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # quant_pre_process logs a traceback before the worker's own fallback handles the failure.
    logging.getLogger("onnxruntime").setLevel(logging.CRITICAL)
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
    except ImportError:  # pragma: no cover - onnxruntime is a worker dependency
        pass


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """Capture what a library prints on stdout/stderr (Python level) for the duration; it is
    logged at debug level afterwards."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                yield buf
            finally:
                text = buf.getvalue().strip()
                if text:
                    log.debug("library output: %s", text[-2000:])
