"""Secrets in URLs (tokens in the query, user:password@) never reach logs, results or records.

Stdlib only: the host-side model installer uses it too.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "REDACTED"
# A URL, without the punctuation that ends the sentence around it.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+?(?=[:;,.)]*(?:[\s'\"<>]|$))")


def url(value: str) -> str:
    """The URL with its user info and every query value hidden: where it points stays readable."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rsplit('@', 1)[1]}"
    query = urlencode([(k, HIDDEN) for k, _v in parse_qsl(parts.query, keep_blank_values=True)], safe=HIDDEN)
    if parts.query and not query:
        query = HIDDEN
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def text(value: str) -> str:
    """Every URL in a message, redacted."""
    return _URL.sub(lambda m: url(m.group(0)), value)
