"""Pull declared models through the host's Ollama API (stdlib only: it runs on hosts).

Ollama reports an error as an HTTP status with a JSON body `{"error": "..."}`, or, once a stream
has started, as an NDJSON line `{"error": "..."}` with the status left at 200
(docs.ollama.com/api/errors). Bodies may also come empty, cut short, or stall; a pull that was cut
resumes where it stopped when asked again. Every outcome here is success or one `OllamaError` line
that carries Ollama's own reason: never a traceback.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ipex_fleet.common import redact

# Statuses that say "not now" rather than "no": asked again after a pause.
RETRY_STATUS = frozenset({429, 502, 503, 504})


class OllamaError(Exception):
    """One line for the user: what failed, with Ollama's own reason."""

    def __init__(self, message: str, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient  # a cut, a stall or a busy server: worth asking again
        self.status = status  # the HTTP status of an error answer; None when nothing answered


@dataclass(frozen=True)
class Api:
    url: str
    timeout: float  # seconds to connect, and the longest silence inside a stream


def _reason(status: int, raw: bytes) -> str:
    """The server's own words from an error body: its `error` field, else its first line."""
    text = raw.decode(errors="replace").strip()
    if not text:
        return f"HTTP {status} with an empty body"
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text.splitlines()[0][:200]}"
    if isinstance(body, dict) and body.get("error"):
        return f"{body['error']} (HTTP {status})"
    return f"HTTP {status}: {text.splitlines()[0][:200]}"


def _open(api: Api, path: str, body: dict[str, Any] | None = None, method: str | None = None
          ) -> http.client.HTTPResponse:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{api.url}{path}", data=data, headers={"Content-Type": "application/json"},
                                     method=method)
    try:
        return urllib.request.urlopen(request, timeout=api.timeout)
    except urllib.error.HTTPError as exc:
        try:
            raw = exc.read()
        except (OSError, http.client.HTTPException):
            raw = b""
        raise OllamaError(_reason(exc.code, raw), exc.code in RETRY_STATUS, exc.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc or type(exc).__name__
        raise OllamaError(f"Ollama at {redact.url(api.url)} does not answer: {reason}", transient=True) from None


def tags(api: Api) -> dict[str, str]:
    """name -> manifest digest, from GET /api/tags."""
    try:
        with _open(api, "/api/tags") as resp:
            raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise OllamaError(f"Ollama at {redact.url(api.url)}: /api/tags was cut short: {exc}", transient=True) from None
    except OllamaError as exc:
        if exc.status is None:
            raise
        raise OllamaError(f"Ollama at {redact.url(api.url)}: /api/tags: {exc}", exc.transient, exc.status) from None
    try:
        models = json.loads(raw).get("models") or []
        return {str(m["name"]): str(m.get("digest") or "") for m in models}
    except (ValueError, AttributeError, TypeError, KeyError):
        head = raw.decode(errors="replace").strip()[:120] or "an empty body"
        raise OllamaError(f"Ollama at {redact.url(api.url)}: /api/tags answered {head!r}, not its model list") from None


def delete(api: Api, name: str) -> None:
    """DELETE /api/delete: the model's tag goes (its blobs with it, unless another model shares them)."""
    try:
        with _open(api, "/api/delete", {"model": name}, method="DELETE") as resp:
            resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise OllamaError(f"/api/delete was cut short: {exc}", transient=True) from None


class _Broken(Exception):
    """The stream stopped without Ollama saying why: it stalled past the timeout, or was cut."""

    def __init__(self, stalled: bool) -> None:
        super().__init__("stalled" if stalled else "cut")
        self.stalled = stalled


def _lines(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """The stream's JSON lines; a stall or a cut (a half line too) raise _Broken."""
    while True:
        try:
            raw = resp.readline()
        except TimeoutError:
            raise _Broken(stalled=True) from None
        except (OSError, http.client.HTTPException):
            raise _Broken(stalled=False) from None
        if not raw:
            return
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            if not raw.endswith(b"\n"):  # a line without its end: the stream was cut in the middle of it
                raise _Broken(stalled=False) from None
            raise OllamaError(f"not Ollama's stream: {raw.decode(errors='replace').strip()[:120]!r}") from None
        if isinstance(line, dict):
            yield line


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _describe(status: str | None, done: int, total: int) -> str:
    where = f" at {done * 100 // total}%" if total else ""
    return f"after {status!r}{where}" if status else "before its first line"


def pull_once(api: Api, name: str, say: Callable[[str], None], progress: Callable[[int, int], None]) -> None:
    """One POST /api/pull, followed to `success`; raises OllamaError with the reason otherwise."""
    status: str | None = None
    done = total = 0
    with _open(api, "/api/pull", {"model": name, "stream": True}) as resp:
        try:
            for line in _lines(resp):
                if line.get("error"):
                    raise OllamaError(str(line["error"]))  # Ollama's own words, status still 200
                status = str(line["status"]) if line.get("status") else status
                if _count(line.get("total")):
                    if not total and _count(line.get("completed")):  # Ollama kept what an earlier pull fetched
                        say(f"ollama/{name}: resuming at {_count(line['completed']) / (1 << 20):.1f} MiB")
                    total, done = _count(line["total"]), _count(line.get("completed"))
                    progress(done, total)
        except _Broken as exc:
            what = f"Ollama sent nothing for {api.timeout:g}s" if exc.stalled else "the stream was cut short"
            raise OllamaError(f"{what} {_describe(status, done, total)}", transient=True) from None
    if status is None:
        raise OllamaError("Ollama answered with an empty body", transient=True)
    if status != "success":
        raise OllamaError(f"the stream ended {_describe(status, done, total)}, not with 'success'", transient=True)


def pull(api: Api, name: str, say: Callable[[str], None], progress: Callable[[int, int], None],
         attempts: int = 4, delay: float = 1.0) -> None:
    """Pull until success; a cut, a stall or a busy server is asked again (Ollama resumes the pull)."""
    for attempt in range(1, attempts + 1):
        try:
            return pull_once(api, name, say, progress)
        except OllamaError as exc:
            if not exc.transient:
                raise OllamaError(f"ollama pull {name}: {exc}") from None
            if attempt == attempts:
                raise OllamaError(f"ollama pull {name}: {exc} (gave up after {attempts} attempts)") from None
            wait = min(delay * 2 ** (attempt - 1), 30)
            say(f"ollama/{name}: {exc}; asking again in {wait:g}s (Ollama resumes the pull)")
            time.sleep(wait)
