"""A small JSON-over-HTTP client for the probe (stdlib only: it runs on hosts)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class HTTPProblem(Exception):
    pass


def request(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200]
        raise HTTPProblem(f"HTTP {exc.code} from {url}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HTTPProblem(f"{url} does not answer: {reason}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise HTTPProblem(f"{url} answered with something that is not JSON") from None
