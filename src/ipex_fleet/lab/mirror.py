"""A model mirror for the lab and the tests: a static HTTP server on loopback with Range support.

    python -m ipex_fleet.lab.mirror --dir DIR --bind 127.0.0.1 --port 8600 [--drop-after BYTES] [--rate B/S]

`--drop-after` cuts the first download of each file after that many bytes, as a flaky network
does. `--rate` serves at most that many bytes a second per download, as a slow link does. GET /_stats answers how many requests and body bytes were served.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        if self.path == "/_stats":
            with self.server.lock:
                body = json.dumps(self.server.stats).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _serve(self, head: bool):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        m = _RANGE.match(self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with self.server.lock:
            self.server.stats["requests"] += 1
            first = self.path not in self.server.dropped
            if first and not head:
                self.server.dropped.add(self.path)
        if head:
            return
        limit = self.server.drop_after if (first and self.server.drop_after) else None
        sent, began = 0, time.monotonic()
        rate = self.server.rate
        chunk = min(1 << 20, max(4096, rate // 10)) if rate else 1 << 20
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                if rate:
                    time.sleep(max(0.0, sent / rate - (time.monotonic() - began)))
                block = f.read(min(chunk, length - sent))
                if not block:
                    break
                if limit is not None and sent + len(block) > limit:
                    block = block[: max(0, limit - sent)]
                    self.wfile.write(block)
                    self._count(len(block))
                    self.close_connection = True
                    self.connection.shutdown(2)  # cut mid-body, as a dropped link does
                    return
                self.wfile.write(block)
                sent += len(block)
                self._count(len(block))

    def _count(self, n: int) -> None:
        with self.server.lock:
            self.server.stats["bytes"] += n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--drop-after", type=int, default=0)
    p.add_argument("--rate", type=int, default=0, help="bytes a second per download (0: no limit)")
    args = p.parse_args()
    os.chdir(args.dir)
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.stats = {"requests": 0, "bytes": 0}
    server.dropped = set()
    server.drop_after = args.drop_after
    server.rate = args.rate
    server.serve_forever()


if __name__ == "__main__":
    main()
