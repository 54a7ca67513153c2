"""Fresh-interpreter baseline: every request runs the hello handler in a new ``python3 -c``.

A small threaded HTTP/1.1 server (standard library only, keep-alive) answers
``GET /hello/serverless`` by fork+exec of ``python3 -c <snippet>`` in the handler's directory; the
snippet imports ``index``, calls ``handler(event, None)`` and writes the result to stdout, which
becomes the response body. Nothing is reused between requests, so each request is a cold start:
this is the floor a platform with no warm instances and no zygotes pays (interpreter start-up,
``site`` import, the handler's import).

usage: fresh_server.py PYTHON CODE_DIR PORT_FILE   (listens on 127.0.0.1, port written to PORT_FILE)
"""

import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SNIPPET = ("import json, sys\n"
           "from index import handler\n"
           "r = handler(json.loads(sys.argv[1]), None)\n"
           "sys.stdout.write(r if isinstance(r, str) else json.dumps(r))\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body go in separate writes
    python = "python3"
    code_dir = "."

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/hello/serverless":
            self._reply(404, b"not found")
            return
        event = json.dumps({"rawPath": self.path, "headers": dict(self.headers),
                            "requestContext": {"http": {"method": "GET"}}})
        proc = subprocess.run([self.python, "-c", SNIPPET, event], cwd=self.code_dir, stdin=subprocess.DEVNULL,
                              capture_output=True, check=False)
        if proc.returncode != 0:
            self._reply(502, proc.stderr[-2000:])
        else:
            self._reply(200, proc.stdout)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass


def main() -> None:
    python, code_dir, port_file = sys.argv[1:4]
    Handler.python, Handler.code_dir = python, code_dir
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
