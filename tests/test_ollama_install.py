"""The model installer against a scripted Ollama, one documented response shape at a time.

Ollama (docs.ollama.com/api/errors) answers an error as an HTTP status with `{"error": ...}`, or,
once a stream has started, as an NDJSON line `{"error": ...}` with the status still 200; a client
also meets empty bodies, streams cut short, streams that stall, and pulls that resume where a cut
one stopped. Each case ends in success or in ONE line that carries the server's own reason.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ipex_fleet.host.models import manifest
from ipex_fleet.host.models.install import install
from ipex_fleet.host.models.manifest import ModelPlan

MODEL = "smollm2:135m"
DIGEST = "a" * 64
Reply = Callable[[socket.socket], None]


def response(status: int, body: bytes, reason: str = "X", headers: str = "") -> Reply:
    def send(conn: socket.socket) -> None:
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n" \
               f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
        conn.sendall(head.encode() + body)
    return send


def error(status: int, message: str) -> Reply:
    return response(status, json.dumps({"error": message}).encode())


def stream(lines: list[dict], cut_after: bytes | None = None, stall: float = 0.0) -> Reply:
    """A chunked NDJSON stream (status 200, as Ollama streams); `cut_after` ends the connection
    mid-chunk after those bytes, `stall` waits that long after the first line."""
    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, line in enumerate(lines):
            data = (json.dumps(line) + "\n").encode()
            conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            if stall and i == 0:
                time.sleep(stall)
        if cut_after is not None:
            conn.sendall(b"%x\r\n%s" % (len(cut_after) + 40, cut_after))  # a chunk that never ends
            return
        conn.sendall(b"0\r\n\r\n")
    return send


def tags(*names: str, digest: str = DIGEST) -> Reply:
    models = [{"name": n, "model": n, "digest": digest, "size": 1} for n in names]
    return response(200, json.dumps({"models": models}).encode())


def pulling(start: int, end: int, total: int = 100) -> list[dict]:
    return [{"status": "pulling manifest"}] + [
        {"status": "pulling 0123456789ab", "digest": "sha256:" + "0" * 64, "total": total, "completed": c}
        for c in range(start, end + 1, 20)]


SUCCESS = [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


class Scripted(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: dict[str, list[Reply]]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = script
        self.calls: list[str] = []

    def reply_for(self, path: str) -> Reply:
        self.calls.append(path)
        replies = self.script[path]
        return replies.pop(0) if len(replies) > 1 else replies[0]  # the last one repeats


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next((int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length")), 0)
        while len(body) < length:
            body += self.request.recv(65536)
        path = lines[0].split()[1]
        try:
            self.server.reply_for(path)(self.request)
        except OSError:
            pass  # the client gave up (a stalled stream): nothing more to say
        finally:
            self.request.close()


@contextmanager
def ollama(script: dict[str, list[Reply]]) -> Iterator[tuple[str, Scripted]]:
    server = Scripted(script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


def run_install(url: str, timeout: float = 5) -> tuple[list[str], list[str], list[str]]:
    lines: list[str] = []
    plan = ModelPlan(ollama=(manifest.OllamaModel(MODEL),))
    import ipex_fleet.host.models.install as installer

    report = installer.Report()
    try:
        installer.install_ollama(url, list(plan.ollama), report, lines.append, timeout, retry_delay=0.01)
    except installer.InstallError as exc:
        report.failed.append(str(exc))
    return report.installed, report.failed, lines


def one_line(failed: list[str]) -> str:
    assert len(failed) == 1, failed
    assert "\n" not in failed[0] and "Traceback" not in failed[0]
    return failed[0]


@pytest.mark.parametrize("status,message", [
    (500, "pull model manifest: file does not exist"),
    (404, "model 'smollm2:135m' not found"),
    (400, "invalid model name"),
])
def test_an_error_status_with_a_json_body_fails_with_the_servers_reason(status, message):
    with ollama({"/api/tags": [tags()], "/api/pull": [error(status, message)]}) as (url, server):
        installed, failed, _ = run_install(url)
    assert installed == []
    assert one_line(failed) == f"ollama pull {MODEL}: {message} (HTTP {status})"
    assert server.calls.count("/api/pull") == 1  # a refusal is not asked again


def test_a_busy_server_is_asked_again_then_its_reason_given():
    with ollama({"/api/tags": [tags()], "/api/pull": [error(429, "server busy, please try again")]}) as (url, server):
        _, failed, lines = run_install(url)
    assert one_line(failed) == f"ollama pull {MODEL}: server busy, please try again (HTTP 429) (gave up after 4 attempts)"
    assert server.calls.count("/api/pull") == 4
    assert sum("asking again" in l for l in lines) == 3


def test_an_error_line_mid_stream_with_status_200_fails_with_that_line():
    lines = pulling(0, 40) + [{"error": "max retries exceeded: unexpected EOF"}]
    with ollama({"/api/tags": [tags()], "/api/pull": [stream(lines)]}) as (url, _):
        installed, failed, _ = run_install(url)
    assert installed == []
    assert one_line(failed) == f"ollama pull {MODEL}: max retries exceeded: unexpected EOF"


@pytest.mark.parametrize("reply,reason", [
    (response(500, b""), "HTTP 500 with an empty body"),
    (response(502, b"<html>Bad Gateway</html>"), "HTTP 502: <html>Bad Gateway</html>"),
    (response(200, b""), "Ollama answered with an empty body"),
])
def test_an_empty_or_foreign_body_fails_in_one_line(reply, reason):
    with ollama({"/api/tags": [tags()], "/api/pull": [reply]}) as (url, _):
        installed, failed, _ = run_install(url)
    assert installed == []
    line = one_line(failed)
    assert line.startswith(f"ollama pull {MODEL}: {reason}"), line


def test_a_stream_cut_mid_line_every_time_says_where_it_stopped():
    cut = stream(pulling(0, 40), cut_after=b'{"status": "pulling 01234')
    with ollama({"/api/tags": [tags()], "/api/pull": [cut]}) as (url, server):
        installed, failed, _ = run_install(url)
    assert installed == []
    assert one_line(failed) == (f"ollama pull {MODEL}: the stream was cut short after 'pulling 0123456789ab' at 40% "
                                "(gave up after 4 attempts)")
    assert server.calls.count("/api/pull") == 4


def test_a_stream_that_ends_before_success_is_not_taken_for_success():
    with ollama({"/api/tags": [tags()], "/api/pull": [stream(pulling(0, 60))]}) as (url, _):
        _, failed, _ = run_install(url)
    assert one_line(failed) == (f"ollama pull {MODEL}: the stream ended after 'pulling 0123456789ab' at 60%, "
                                "not with 'success' (gave up after 4 attempts)")


def test_a_stalled_stream_hits_the_timeout_and_says_so():
    stalled = stream(pulling(0, 20), stall=3.0)
    with ollama({"/api/tags": [tags()], "/api/pull": [stalled]}) as (url, _):
        started = time.monotonic()
        _, failed, _ = run_install(url, timeout=0.3)
    assert one_line(failed) == (f"ollama pull {MODEL}: Ollama sent nothing for 0.3s after 'pulling manifest' "
                                "(gave up after 4 attempts)")
    assert time.monotonic() - started < 10  # bounded by the timeout, not by the server


def test_a_cut_pull_resumes_where_it_stopped_and_succeeds():
    first = stream(pulling(0, 40), cut_after=b'{"status"')
    resumed = stream(pulling(40, 100) + SUCCESS)
    script = {"/api/tags": [tags(), tags(MODEL)], "/api/pull": [first, resumed]}
    with ollama(script) as (url, server):
        installed, failed, lines = run_install(url)
    assert failed == [] and installed == [f"ollama/{MODEL}"]
    assert server.calls.count("/api/pull") == 2
    assert any("the stream was cut short after 'pulling 0123456789ab' at 40%" in l and "asking again" in l
               for l in lines), lines
    assert any("resuming at" in l for l in lines), lines
    assert lines[-1] == f"ollama/{MODEL}: pulled, digest {DIGEST[:12]}"


def test_success_without_a_digest_in_tags_is_a_failure():
    script = {"/api/tags": [tags()], "/api/pull": [stream(pulling(0, 100) + SUCCESS)]}
    with ollama(script) as (url, _):
        _, failed, _ = run_install(url)
    assert one_line(failed) == f"ollama pull {MODEL} said success, but /api/tags has no digest for it"


@pytest.mark.parametrize("reply,reason", [
    (error(500, "llama runner process has terminated"), "/api/tags: llama runner process has terminated (HTTP 500)"),
    (response(200, b"not json"), "/api/tags answered 'not json', not its model list"),
])
def test_an_unreadable_model_list_fails_in_one_line(reply, reason):
    with ollama({"/api/tags": [reply]}) as (url, _):
        _, failed, _ = run_install(url)
    assert one_line(failed) == f"Ollama at {url}: {reason}"


def test_install_reports_a_dead_ollama_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = install(ModelPlan(ollama=(manifest.OllamaModel(MODEL),)), tmp_path, f"http://127.0.0.1:{port}",
                     lambda _l: None, timeout=2)
    assert one_line(report.failed) == f"Ollama at http://127.0.0.1:{port} does not answer: [Errno 111] Connection refused"


def test_the_host_command_prints_one_failed_line_and_exits_1(tmp_path, capsys):
    from ipex_fleet.host.models.__main__ import main

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(ModelPlan(ollama=(manifest.OllamaModel(MODEL),)).to_json()))
    cut = [{"status": "pulling manifest"}, {"error": "pull model manifest: 412: this model needs a newer Ollama"}]
    with ollama({"/api/tags": [tags()], "/api/pull": [stream(cut)]}) as (url, _):
        rc = main(["install", "--plan", str(plan), "--ollama", url, "--root", str(tmp_path), "--json"])
    out = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out.out + out.err
    assert f"FAILED ollama pull {MODEL}: pull model manifest: 412: this model needs a newer Ollama" in out.out.splitlines()
    assert json.loads(out.out.splitlines()[-1])["failed"] == [
        f"ollama pull {MODEL}: pull model manifest: 412: this model needs a newer Ollama"]


# -- pinned models: the digest /api/tags shows must be the declared one ---------------------------

OTHER = "b" * 64


def run_pinned(script: dict[str, list[Reply]], digest: str = DIGEST) -> tuple[list[str], list[str], list[str],
                                                                              list[str], Scripted]:
    from ipex_fleet.host.models import install as installer

    report, lines = installer.Report(), []
    with ollama(script) as (url, server):
        try:
            installer.install_ollama(url, [manifest.OllamaModel(MODEL, digest)], report, lines.append, 5,
                                     retry_delay=0.01)
        except installer.InstallError as exc:
            report.failed.append(str(exc))
    return report.installed + report.present, report.failed, report.drifted, lines, server


def test_a_pinned_model_with_its_digest_is_pulled_and_kept():
    script = {"/api/tags": [tags(), tags(MODEL, digest=DIGEST)], "/api/pull": [stream(pulling(0, 100) + SUCCESS)]}
    ok, failed, drifted, _, _ = run_pinned(script)
    assert ok == [f"ollama/{MODEL}"] and failed == [] and drifted == []


def test_a_retagged_upstream_model_is_refused_and_deleted():
    deleted = response(200, b"")
    script = {"/api/tags": [tags(), tags(MODEL, digest=OTHER)], "/api/pull": [stream(pulling(0, 100) + SUCCESS)],
              "/api/delete": [deleted]}
    ok, failed, _, _, server = run_pinned(script)
    assert ok == []
    assert one_line(failed) == (f"ollama pull {MODEL}: got digest {OTHER[:12]}, but {DIGEST[:12]} is declared (the tag "
                                "now names another model upstream; it was deleted again); pin the new digest once it "
                                "is checked, or keep the old model")
    assert server.calls == ["/api/tags", "/api/pull", "/api/tags", "/api/delete"]


def test_a_drifted_model_is_reported_and_pulled_back_to_its_pin():
    script = {"/api/tags": [tags(MODEL, digest=OTHER), tags(MODEL, digest=DIGEST)],
              "/api/pull": [stream(pulling(0, 100) + SUCCESS)]}
    ok, failed, drifted, lines, _ = run_pinned(script)
    assert ok == [f"ollama/{MODEL}"] and failed == []
    assert drifted == [f"ollama/{MODEL}: /api/tags has digest {OTHER[:12]}, declared {DIGEST[:12]}"]
    assert any("drifted from the declared" in l for l in lines)


def test_a_present_model_with_its_pin_is_not_pulled():
    ok, failed, drifted, _, server = run_pinned({"/api/tags": [tags(MODEL, digest="sha256:" + DIGEST)]})
    assert ok == [f"ollama/{MODEL}"] and failed == drifted == [] and server.calls == ["/api/tags"]


@pytest.mark.parametrize("entry,pin", [
    ({"ollama": f"llama3.2:1b@sha256:{DIGEST}"}, DIGEST),
    ({"ollama": "llama3.2:1b", "digest": f"sha256:{DIGEST.upper()}"}, DIGEST),
    ({"ollama": "llama3.2:1b", "digest": DIGEST}, DIGEST),
    ({"ollama": "llama3.2:1b"}, None),
])
def test_the_manifest_reads_a_pin_either_way_and_the_plan_carries_it(entry, pin):
    plan = manifest.parse([entry], "m")
    assert plan.ollama == (manifest.OllamaModel("llama3.2:1b", pin),)
    assert ModelPlan.from_json(json.loads(json.dumps(plan.to_json()))).ollama == plan.ollama


@pytest.mark.parametrize("entry,message", [
    ({"ollama": "llama3.2:1b@sha256:abc"}, "digest 'sha256:abc' must be sha256:<64 hex digits>"),
    ({"ollama": "llama3.2:1b", "digest": "md5:" + "a" * 32}, "must be sha256:<64 hex digits>"),
    ({"ollama": f"llama3.2:1b@sha256:{DIGEST}", "digest": DIGEST}, "give the digest once"),
    ({"ollama": "llama3.2:1b", "sha256": DIGEST}, "unknown key(s) sha256"),
])
def test_a_bad_pin_is_refused_in_one_line(entry, message):
    from ipex_fleet.common.errors import UserError

    with pytest.raises(UserError) as err:
        manifest.parse([entry], "m")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_whole_line_that_is_not_json_is_not_ollama_and_not_asked_again():
    proxy_page = response(200, b"<html>proxy</html>\n")
    with ollama({"/api/tags": [tags()], "/api/pull": [proxy_page]}) as (url, server):
        _, failed, _ = run_install(url)
    assert one_line(failed) == f"ollama pull {MODEL}: not Ollama's stream: '<html>proxy</html>'"
    assert server.calls.count("/api/pull") == 1
