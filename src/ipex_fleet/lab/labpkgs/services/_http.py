"""Shared plumbing of the lab's service stand-ins: argument parsing and a JSON HTTP server."""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args(description, extra=None):
    """The stand-ins' common arguments; `extra(parser)` adds a service's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--fail-start", action="store_true",
                        help="fail at start-up, as a service with a broken configuration does")
    if extra:
        extra(parser)
    return parser.parse_args()


def fail_start(name):
    print(f"{name}: Error: could not load configuration: invalid value (lab fault fail_service={name})",
          file=sys.stderr)
    sys.exit(1)


class JSONHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lab"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self):
        """Start a chunked application/x-ndjson response, as Ollama streams."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def stream_line(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def serve(handler_cls, args, **attributes):
    """Serve forever; `attributes` are set on the server, where handlers find them."""
    os.makedirs(args.state, exist_ok=True)
    server = ThreadingHTTPServer((args.host, args.port), handler_cls)
    server.daemon_threads = True
    server.state_dir = args.state
    for name, value in attributes.items():
        setattr(server, name, value)
    server.serve_forever()
