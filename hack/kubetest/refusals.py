"""Recognising, in an operator's log, a request the API server refused."""

from __future__ import annotations

import re

# A request the API server refused, as kopf and the kubernetes client log it: the Status reason
# ("Forbidden", "... is forbidden: User ...") or an HTTP status written out. A bare "403" is not
# one: log timestamps carry milliseconds (",403") and access logs carry byte counts.
_REFUSED = re.compile(r"[Ff]orbidden|\bstatus[=: ]+403\b|\(403\)|HTTP/1\.[01]\" 403\b|\b403,\s*message")


def refused_lines(log: str) -> list[str]:
    """The lines of an operator log that record a refused (HTTP 403) request."""
    return [line for line in log.splitlines() if _REFUSED.search(line)]
