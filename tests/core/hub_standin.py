"""A stand-in Hugging Face hub on 127.0.0.1 for the download tests: ``/{repo}/resolve/{revision}/{file}`` answers
HEAD and GET like the hub does for git-lfs files (``X-Repo-Commit``, ``ETag`` = the file's SHA-256, sizes), for the
revisions it was given; anything else is a 404. ``files`` maps (repo, revision, name) → bytes; ``etags`` may
override an ETag (a tampered mirror)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Tuple

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, files: Dict[Tuple[str, str, str], bytes]) -> None:
        self.files = dict(files)
        self.etags: Dict[Tuple[str, str, str], str] = {}
        self.requests = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _find(self):
                hub.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None, None
                key = ("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
                return key, hub.files.get(key)

            def _head(self, key, body):
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                etag = hub.etags.get(key) or hashlib.sha256(body).hexdigest()
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(body)))
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()

            def do_HEAD(self):
                key, body = self._find()
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._head(key, body)

            def do_GET(self):
                key, body = self._find()
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._head(key, body)
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
