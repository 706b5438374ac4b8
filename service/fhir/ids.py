"""The FHIR id rule, for every id that comes from a request and may end up in a URL.

FHIR R4 `id`: 1-64 characters of `[A-Za-z0-9\\-.]` (https://hl7.org/fhir/R4/datatypes.html#id).
The character class alone still lets `.` and `..` through, which are path segments, not ids:
`{fhirServer}/Patient/..` would be read with the client's access token as the server's base.
So they are refused too. Patterns are full-matched: `$` alone also matches before a trailing
newline, which would carry a line break into a URL or a log.
"""

from __future__ import annotations

import re
from typing import Any

FHIR_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
DOT_SEGMENTS = frozenset({".", ".."})


def is_fhir_id(value: Any) -> bool:
    return isinstance(value, str) and FHIR_ID_RE.fullmatch(value) is not None and value not in DOT_SEGMENTS


def has_dot_segment(path: str) -> bool:
    """True when a URL path holds a `.` or `..` segment (also percent-encoded): a server that
    normalises it would serve something other than what the link appears to name."""
    from urllib.parse import unquote

    return any(unquote(seg) in DOT_SEGMENTS for seg in path.split("/"))
