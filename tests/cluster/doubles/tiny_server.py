"""A tiny real HTTP server used as an allocation's command in tests of the doubles.

Listens on ``FAAS_HOST``/``NOMAD_IP_http`` (default 127.0.0.1) and ``FAAS_PORT``/
``NOMAD_PORT_http``. Serves ``/_/health`` (200), ``/_/ready`` (status from ``TINY_READY_STATUS``,
default 200, or from a file named by ``TINY_READY_FILE`` when it exists) and ``/env`` (its
environment as JSON). ``TINY_EXIT=<code>`` makes it exit at once with that code. SIGTERM and
SIGINT end it with status 0.
"""
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    if os.environ.get("TINY_EXIT"):
        sys.exit(int(os.environ["TINY_EXIT"]))
    host = os.environ.get("FAAS_HOST") or os.environ.get("NOMAD_IP_http") or "127.0.0.1"
    port = int(os.environ.get("FAAS_PORT") or os.environ["NOMAD_PORT_http"])

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/_/health":
                self._send(200, {"state": "ready", "pid": os.getpid()})
            elif self.path == "/_/pool":  # a generic pool instance, for runtime-pool's check
                self._send(200 if os.environ.get("FAAS_POOL") == "1" else 503, {"state": "pool"})
            elif self.path == "/_/ready":
                status = int(os.environ.get("TINY_READY_STATUS", "200"))
                f = os.environ.get("TINY_READY_FILE")
                if f and os.path.exists(f):
                    status = int(open(f).read().strip())
                self._send(status, {"state": "ready" if status == 200 else "starting"})
            elif self.path == "/env":
                self._send(200, dict(os.environ))
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)

    def stop(*_):
        server.server_close()
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
