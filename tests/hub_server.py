"""A local HTTP server laid out like the Hugging Face Hub, for testing downloads without the network.

Serves what huggingface_hub 2.x asks for: `GET /api/models/<repo>[/revision/<rev>]` (file list with sizes and LFS
sha256), `HEAD` / `GET /<repo>/resolve/<rev>/<file>` (X-Repo-Commit, X-Linked-Etag, X-Linked-Size; byte Range
requests answered 206). A repo marked gated answers 401 (X-Error-Code: GatedRepo) without the right token.
Every request is logged (method, path, Range, Authorization) so tests can check what was asked.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], gated: dict[str, str] | None = None):
        self.repos = repos  # repo -> {filename: content}
        self.gated = gated or {}  # repo -> the token that opens it
        self.log: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _deny(self, repo) -> bool:
                want = hub.gated.get(repo)
                if want is None or self.headers.get("Authorization") == f"Bearer {want}":
                    return False
                body = json.dumps({"error": f"Access to model {repo} is restricted."}).encode()
                self.send_response(401)
                self.send_header("X-Error-Code", "GatedRepo")
                self.send_header("X-Error-Message", f"Access to model {repo} is restricted.")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                return True

            def _not_found(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _route(self):
                path = unquote(urlparse(self.path).path)
                hub.log.append({"method": self.command, "path": path, "range": self.headers.get("Range"),
                                "auth": self.headers.get("Authorization")})
                if path.startswith("/api/models/"):
                    rest = path[len("/api/models/"):].split("/revision/")[0]
                    return "api", rest, None
                parts = path.lstrip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    return "file", "/".join(parts[:2]), "/".join(parts[4:])
                return None, None, None

            def do_GET(self):
                kind, repo, name = self._route()
                if repo not in hub.repos:
                    return self._not_found()
                if self._deny(repo):
                    return
                if kind == "api":
                    files = hub.repos[repo]
                    body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                       "gated": "manual" if repo in hub.gated else False,
                                       "siblings": [{"rfilename": n, "size": len(c),
                                                     "lfs": {"size": len(c), "sha256": hashlib.sha256(c).hexdigest(),
                                                             "pointerSize": 134}}
                                                    for n, c in files.items()]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._file(repo, name, head=False)

            def do_HEAD(self):
                kind, repo, name = self._route()
                if kind != "file" or repo not in hub.repos:
                    return self._not_found()
                if self._deny(repo):
                    return
                self._file(repo, name, head=True)

            def _file(self, repo, name, head: bool):
                content = hub.repos[repo].get(name)
                if content is None:
                    return self._not_found()
                sha = hashlib.sha256(content).hexdigest()
                start = 0
                rng = self.headers.get("Range")
                if rng and not head:
                    start = int(rng.split("=")[1].split("-")[0])
                body = content[start:]
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{sha}"')
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(content)))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.send_header("Content-Length", str(len(content) if head else len(body)))
                self.end_headers()
                if not head:
                    view = memoryview(body)
                    for i in range(0, len(body), 65536):
                        self.wfile.write(view[i:i + 65536])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def ranges(self, name: str) -> list[str | None]:
        return [e["range"] for e in self.log if e["method"] == "GET" and e["path"].endswith("/" + name)]
