"""Worker errors and their exit codes (docs/contracts.md).

Every error carries `where` (a spec field such as `spec.model.uri`, or a file) and a one-line
`reason`; the worker prints `error: <where>: <reason>` on stderr and exits with `exit_code`:
2 for bad input (spec, data, model file, URI, credentials), 3 for a rejected quality gate, 1 for
anything else.
"""

from __future__ import annotations

import re
from typing import Final

EXIT_OK: Final = 0
EXIT_INTERNAL: Final = 1
EXIT_INPUT: Final = 2
EXIT_GATE: Final = 3

MAX_REASON: Final = 600


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """Collapse whitespace (tracebacks, multi-line library messages) into one bounded line."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    # ANSI colour codes some libraries put in their messages.
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message (library errors can be pages long)."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        # The real error is the last line, after the TorchScript traceback.
        lines = lines[-1:]
    for line in lines:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line:
            sentence = line.split(". ", 1)[0]
            return one_line(sentence if len(sentence) >= 20 else line, 240)
    return type(exc).__name__


class WorkerError(Exception):
    exit_code: int = EXIT_INTERNAL

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = one_line(reason)
        super().__init__(self.line)

    @property
    def line(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


class InputError(WorkerError):
    """The spec, a data file, the model file, a URI or credentials are wrong (exit 2)."""

    exit_code = EXIT_INPUT


class GateError(WorkerError):
    """No candidate passed the quality gate (exit 3). `candidates`: the table of what was tried
    (report.candidate_entry rows), for the summary the operator shows in status."""

    exit_code = EXIT_GATE

    def __init__(self, where: str, reason: str, candidates: list[dict[str, object]] | None = None) -> None:
        super().__init__(where, reason)
        self.candidates = list(candidates or [])


class OptimizationError(WorkerError):
    """A step failed for a reason that is not the input's fault (exit 1)."""

    exit_code = EXIT_INTERNAL
