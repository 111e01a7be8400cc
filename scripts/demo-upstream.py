#!/usr/bin/env python3
"""A stand-in provider for trying sluice: answers every method with 200 and
a short JSON echo.  Listens on loopback unless told otherwise.

    scripts/demo-upstream.py [PORT [HOST]]   (default 9000 127.0.0.1;
                                              deploy/compose.yaml runs it
                                              on 0.0.0.0 in its container)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body are two writes: without TCP_NODELAY the
    # body waits for the peer's delayed ACK (40 ms) on a kept-alive
    # connection, which would show as the provider's latency.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({"method": self.command, "path": self.path}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    ThreadingHTTPServer((host, port), Handler).serve_forever()
