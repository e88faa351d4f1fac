"""A small web app: GET / answers with a greeting, GET /health with "ok"."""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer


def greeting(name: str = "world") -> dict:
    return {"message": f"hello, {name}"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/health":
            body, kind = b"ok", "text/plain"
        else:
            name = self.path.strip("/") or "world"
            body, kind = json.dumps(greeting(name)).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
