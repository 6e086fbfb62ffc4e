"""A small Hugging Face hub on 127.0.0.1 for tests, speaking the file-download protocol.

What huggingface_hub (2.4, ``file_download.py``) does for ``hf_hub_download``, and what this
server answers (read from its source: ``get_hf_file_metadata``,
``_httpx2_follow_hub_redirects_with_backoff``, ``hf_raise_for_status``, ``http_get``):

1. ``HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}`` with redirects off. The hub
   follows a redirect itself only when it stays on a hub origin (same scheme/host/port).
   * regular (git) file: ``200`` with ``X-Repo-Commit``, ``ETag: "<git blob sha1>"`` and
     ``Content-Length``;
   * LFS file: ``302`` to a CDN on *another origin* (a second port here) with
     ``X-Repo-Commit``, ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``; the client keeps
     the Location as the download URL and drops ``Authorization`` for it;
   * renamed repository: ``307`` with a relative Location on the same origin (followed);
   * errors: ``404`` with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``
     (``EntryNotFound`` carries ``X-Repo-Commit``), ``401`` + ``RepoNotFound`` for a private
     repo without a valid token.
2. ``GET`` of the download URL: the bytes with ``Content-Length`` (``Range`` honoured).
3. ``GET {endpoint}/api/agent-harnesses`` (a JSON list the client fetches at most once a
   day, best-effort, when it builds its user-agent): an empty registry.

No ``X-Xet-*`` headers are sent, so the client never switches to Xet storage. The server
counts and records every request (method, which origin, path, headers), can serve a
corrupted copy of a file (same size, one byte flipped, headers unchanged) and can be
stopped to simulate a hub that is down. HTTP/1.0: one connection per request, so a
stopped server refuses everything at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (the hub's ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeFile:
    data: bytes
    lfs: bool = True
    corrupt: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)

    def served(self) -> bytes:
        if not self.corrupt:
            return self.data
        bad = bytearray(self.data)
        bad[len(bad) // 2] ^= 0xFF  # same size: the client's size check cannot catch it
        return bytes(bad)


@dataclass
class Request:
    method: str
    origin: str  # "hub" or "cdn"
    path: str
    headers: dict[str, str]  # keys lower-cased

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Repo:
    commits: dict[str, dict[str, FakeFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # private repo: needs "Authorization: Bearer <token>"


class FakeHub:
    """The server; ``endpoint`` is what HF_ENDPOINT should be set to."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.renamed: dict[str, str] = {}
        self.blobs: dict[str, FakeFile] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0
        self.cdn_port = 0

    # --- content --------------------------------------------------------------------------

    def add_file(
        self,
        repo_id: str,
        filename: str,
        data: bytes,
        *,
        branch: str = "main",
        lfs: bool = True,
        private_token: str | None = None,
    ) -> str:
        """Commit ``filename`` to ``repo_id`` on ``branch``; return the new commit id."""
        repo = self.repos.setdefault(repo_id, _Repo())
        if private_token is not None:
            repo.token = private_token
        parent = repo.refs.get(branch)
        files = dict(repo.commits.get(parent, {})) if parent else {}
        file = FakeFile(data, lfs=lfs)
        files[filename] = file
        seed = f"{repo_id}\0{filename}\0{file.sha256}\0{len(repo.commits)}".encode()
        commit = hashlib.sha1(seed).hexdigest()
        repo.commits[commit] = files
        repo.refs[branch] = commit
        self.blobs[file.sha256] = file
        return commit

    def set_corrupt(self, repo_id: str, filename: str, corrupt: bool = True) -> None:
        """Serve a flipped byte for every copy of ``filename`` in ``repo_id``."""
        for files in self.repos[repo_id].commits.values():
            if filename in files:
                files[filename].corrupt = corrupt

    # --- request log ----------------------------------------------------------------------

    def count(self, method: str | None = None, origin: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and (origin is None or r.origin == origin)
            )

    def downloads(self) -> int:
        """Number of file bodies requested (GETs on the CDN or on /resolve/)."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.method == "GET" and (r.origin == "cdn" or "/resolve/" in r.path)
            )

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    def start(self) -> FakeHub:
        for origin in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub = self  # type: ignore[attr-defined]
            server.origin = origin  # type: ignore[attr-defined]
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.port = self._servers[0].server_address[1]
        self.cdn_port = self._servers[1].server_address[1]
        return self

    def stop(self) -> None:
        """Stop both origins: every later connection is refused."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def _record(self) -> None:
        with self.hub._lock:
            self.hub.requests.append(
                Request(
                    self.command,
                    self.server.origin,  # type: ignore[attr-defined]
                    self.path,
                    {key.lower(): value for key, value in self.headers.items()},
                )
            )

    def do_HEAD(self) -> None:
        self._record()
        self._dispatch(body=False)

    def do_GET(self) -> None:
        self._record()
        self._dispatch(body=True)

    def _send(
        self, status: int, headers: dict[str, str], body: bytes = b"", send_body: bool = True
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def _error(
        self, status: int, code: str, body: bool, extra: dict[str, str] | None = None
    ) -> None:
        message = f"{code}".encode()
        headers = {"X-Error-Code": code, "X-Error-Message": code, **(extra or {})}
        self._send(status, headers, message, send_body=body)

    def _dispatch(self, body: bool) -> None:
        if self.server.origin == "cdn":  # type: ignore[attr-defined]
            self._serve_cdn(body)
        else:
            self._serve_resolve(body)

    def _serve_cdn(self, body: bool) -> None:
        sha = urlsplit(self.path).path.rsplit("/", 1)[-1]
        file = self.hub.blobs.get(sha)
        if file is None:
            self._send(404, {}, b"no such blob", send_body=body)
            return
        self._serve_bytes(file.served(), {"ETag": f'"{file.sha256}"'}, body)

    def _serve_bytes(self, data: bytes, headers: dict[str, str], body: bool) -> None:
        start = 0
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
            start = int(rng[6:].split("-")[0])
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        self._send(status, headers, data[start:], send_body=body)

    def _serve_resolve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/api/agent-harnesses":  # fetched once a day by huggingface_hub >= 1.x
            payload = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
            self._send(200, {"Content-Type": "application/json"}, payload, send_body=body)
            return
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "RepoNotFound", body)
            return
        repo_id = f"{parts[0]}/{parts[1]}"
        revision = unquote(parts[3])
        filename = unquote("/".join(parts[4:]))
        if repo_id in self.hub.renamed:  # the hub answers a renamed repo with a relative 307
            new = self.hub.renamed[repo_id]
            location = f"/{new}/resolve/{quote(revision, safe='')}/{quote(filename)}"
            self._send(307, {"Location": location}, send_body=body)
            return
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", body)
            return
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "RepoNotFound", body)
            return
        commit = repo.refs.get(revision, revision)
        files = repo.commits.get(commit)
        if files is None:
            self._error(404, "RevisionNotFound", body)
            return
        file = files.get(filename)
        if file is None:
            self._error(404, "EntryNotFound", body, {"X-Repo-Commit": commit})
            return
        headers = {"X-Repo-Commit": commit, "ETag": f'"{file.etag}"'}
        if not file.lfs:
            self._serve_bytes(file.served(), headers, body)
            return
        headers.update(
            {
                "X-Linked-Etag": f'"{file.sha256}"',
                "X-Linked-Size": str(len(file.data)),
                "Location": f"{self.hub.cdn}/blobs/{file.sha256}?X-Signature=fake",
            }
        )
        self._send(302, headers, send_body=body)
