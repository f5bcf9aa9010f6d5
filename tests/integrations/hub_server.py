"""A small Hub-compatible HTTP server for tests: a test double, not a Hub.

It lives with the tests, not in the installed package: pytest puts tests/integrations on ``sys.path`` (the
``pythonpath`` setting in pyproject.toml), so tests import it as ``from hub_server import HubServer``; the
``hub_server`` fixture of tests/integrations/conftest.py runs one with huggingface_hub pointed at it.

``HubServer`` runs on loopback (``127.0.0.1``, a free port) in a background thread, using only the standard library
(``http.server``). It keeps repositories in memory and implements just enough of the Hugging Face Hub's HTTP API
for the real ``huggingface_hub`` client to create repositories, push folders (small files inline, binary and large
files through Git LFS) and download them again, either with ``endpoint=hub.url`` or with ``HF_ENDPOINT=hub.url``::

    with HubServer() as hub:
        api = HfApi(endpoint=hub.url, token="any")
        api.create_repo("user/tiny", exist_ok=True)
        api.upload_folder(folder_path="out", repo_id="user/tiny", commit_message="first")
        path = snapshot_download("user/tiny", endpoint=hub.url, cache_dir=tmp)
        assert hub.files("user/tiny")["config.json"] == Path("out/config.json").read_bytes()

Endpoints (``{type}`` is ``models``, ``datasets``, ``spaces`` or ``kernels``; web paths of non-model repositories
carry the ``datasets/``, ``spaces/`` or ``kernels/`` prefix, as on the Hub):

- ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``GET /api/whoami-v2``, ``POST /api/validate-yaml``
  (accepts any README).
- ``GET /api/{type}/{repo}`` and ``GET /api/{type}/{repo}/revision/{rev}``: repository info with ``sha`` and
  ``siblings`` (with sizes, blob ids and LFS info when ``?blobs=true``).
- ``GET /api/{type}/{repo}/tree/{rev}[/{path}]`` (``?recursive=true``), ``POST /api/{type}/{repo}/paths-info/{rev}``,
  ``GET /api/{type}/{repo}/refs``, ``GET /api/{type}/{repo}/commits/{rev}``, ``POST``/``DELETE
  /api/{type}/{repo}/branch/{name}``.
- ``POST /api/{type}/{repo}/preupload/{rev}``: decides ``regular`` or ``lfs`` per file (LFS for sizes from
  ``lfs_threshold`` on, for the Hub's default ``.gitattributes`` extensions such as ``*.safetensors``, and for any
  sample that is not UTF-8 text, e.g. PNG files) and reports the current oid of each path so that unchanged files
  are skipped by the client.
- ``POST /{repo}.git/info/lfs/objects/batch``: the Git LFS batch API, ``basic`` transfer only, with ``upload`` and
  ``verify`` actions (no actions for objects the repository already holds); ``PUT /{repo}.git/info/lfs/objects/{oid}``
  stores an object after checking its sha256; ``POST .../objects/{oid}/verify`` checks it is there.
- ``POST /api/{type}/{repo}/commit/{rev}``: the NDJSON commit API (``header``, ``file``, ``lfsFile``,
  ``deletedFile``, ``deletedFolder``; ``parentCommit`` is honoured). A commit is validated completely before the
  branch moves, so a failing commit leaves the previous revision intact; each commit gets a new 40-hex sha.
- ``GET``/``HEAD /{repo}/resolve/{rev}/{path}``: the file bytes with ``ETag``, ``X-Repo-Commit``,
  ``Content-Length`` and, for LFS files, ``X-Linked-Etag`` / ``X-Linked-Size``; ``Range`` requests are honoured.

Not implemented: Xet storage (no Xet headers are ever sent; the ``xet-*-token`` routes answer 501), pull requests,
multipart LFS transfers, tags, access control (any token, or none, is accepted) and pagination (every listing fits
one page). A new repository holds an empty initial commit (no ``.gitattributes``), so ``files()`` returns exactly
what was pushed.

Client-side settings: ``huggingface_hub`` 2.x uploads through Xet whenever ``hf_xet`` is installed, whatever the
server says, so the client must run with ``HF_HUB_DISABLE_XET=1`` (or ``huggingface_hub.constants.HF_HUB_DISABLE_XET
= True`` in-process). It must also not be offline (``HF_HUB_OFFLINE`` unset or ``0``; in-process the flag is read
from ``huggingface_hub.constants.HF_HUB_OFFLINE`` at call time). ``HF_ENDPOINT`` is read once, at import time.

Safety: the server has no authentication, so it binds loopback addresses only (``allow_non_loopback=True`` overrides
that); a request body larger than ``max_body_bytes`` (512 MiB by default) is answered ``413`` without being read; an
internal error is answered ``500`` with the exception's type only, its traceback goes to this module's logger.

Fault injection: ``hub.fail_next(n=1, status=500, path_contains="/commit/")`` makes the next ``n`` matching
requests answer with that status (the request body is read and discarded first). The client retries some calls
by itself (preupload, LFS batch, upload PUT and verify, on 408/429/500/502/503/504, with back-off sleeps of 1 s,
2 s, ...); the commit POST is never retried, and a status such as 501 or 507 is not retried anywhere, so those make
quick, deterministic failures. Every request is recorded in ``hub.requests`` as ``(method, path)``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from types import MappingProxyType
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hf_sparse.errors import quote as quote_value

__all__ = ["HubServer", "Fault"]

logger = logging.getLogger(__name__)

DEFAULT_BRANCH = "main"
# Large enough for the real packaged model's checkpoints (tens of MB); a bound so that a client cannot make the
# server buffer an arbitrary amount of memory.
DEFAULT_MAX_BODY_BYTES = 512 * 1024 * 1024


def _is_loopback(host: str) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# The Hub's default .gitattributes: files matching these are stored in LFS whatever their size.
_LFS_SUFFIXES = (
    ".7z .arrow .bin .bz2 .ckpt .ftz .gz .h5 .joblib .mlmodel .model .msgpack .npy .npz .onnx .ot .parquet .pb "
    ".pickle .pkl .pt .pth .rar .safetensors .tar .tflite .tgz .wasm .xz .zip .zst"
).split()

_TYPE_TO_PLURAL = {"model": "models", "dataset": "datasets", "space": "spaces", "kernel": "kernels"}
_PLURAL_TO_TYPE = {plural: kind for kind, plural in _TYPE_TO_PLURAL.items()}
_WEB_PREFIXES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
# Path segments that follow the repository id in /api/{type}/{repo}/... routes.
_API_ACTIONS = {
    "revision",
    "tree",
    "paths-info",
    "preupload",
    "commit",
    "commits",
    "refs",
    "branch",
    "xet-write-token",
    "xet-read-token",
}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_HEX_RE = re.compile(r"[0-9a-f]{7,40}")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class _Blob:
    """One file's content as stored in a commit."""

    content: bytes
    lfs: bool
    sha256: str
    git_oid: str  # git sha1 of the content (regular file) or of the LFS pointer (LFS file)
    pointer_size: int

    @classmethod
    def make(cls, content: bytes, *, lfs: bool) -> _Blob:
        sha256 = hashlib.sha256(content).hexdigest()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n"
            return cls(content, True, sha256, _git_blob_oid(pointer.encode()), len(pointer))
        return cls(content, False, sha256, _git_blob_oid(content), 0)

    @property
    def etag(self) -> str:
        """What the Hub uses as ETag, and what the client compares local files against (``_local_oid``)."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass(frozen=True)
class _Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    date: datetime
    files: Mapping[str, _Blob]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid
    commits: dict[str, _Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content, uploaded (maybe not committed)


@dataclass
class Fault:
    """A pending injected failure (see :meth:`HubServer.fail_next`). ``hits`` counts the requests it failed."""

    status: int
    remaining: int
    path_contains: str | None = None
    method: str | None = None
    message: str = "Injected failure (HubServer.fail_next)"
    hits: int = 0

    def matches(self, method: str, raw_path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path_contains is None:
            return True
        return self.path_contains in raw_path or self.path_contains in unquote(raw_path)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


_Response = tuple[int, dict[str, str], bytes]


def _json(payload, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name)
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


def _check_repo_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in parts):
        raise _HttpError(400, f"Invalid path in repository: {path!r}")
    return path


class HubServer:
    """An in-memory, Hub-compatible HTTP server on loopback for tests (see the module docstring).

    Args:
        lfs_threshold: Files of at least this many bytes are stored in LFS (the Hub uses 10 MiB).
        user: The user name reported by ``whoami`` and used as namespace for repository ids without one.
        host: Interface to bind; the port is chosen by the system. Only loopback addresses (``127.0.0.0/8``,
            ``::1``, ``localhost``) are accepted: the server has no authentication, so binding it to a network
            interface would let anyone on that network write to it.
        allow_non_loopback: Accept a ``host`` that is not loopback anyway (you take responsibility for who can
            reach it).
        max_body_bytes: Requests whose body is larger are answered ``413`` without reading the body, and the
            connection is closed.
    """

    def __init__(
        self,
        *,
        lfs_threshold: int = 10 * 1024 * 1024,
        user: str = "hub-user",
        host: str = "127.0.0.1",
        allow_non_loopback: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        if not allow_non_loopback and not _is_loopback(host):
            raise ValueError(
                f"HubServer binds to loopback only (it has no authentication); got host={quote_value(host)}. "
                "Use host='127.0.0.1', or pass allow_non_loopback=True if you really mean to expose it."
            )
        if not isinstance(max_body_bytes, int) or isinstance(max_body_bytes, bool) or max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be a non-negative int; got {quote_value(max_body_bytes)}")
        self.lfs_threshold = lfs_threshold
        self.user = user
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.requests: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("HubServer is not running; call start() or use it as a context manager.")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> HubServer:
        if self._httpd is not None:
            return self
        self._httpd = _Server((self.host, 0), self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="HubServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake up handler threads waiting on kept-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        path_contains: str | None = None,
        method: str | None = None,
        message: str | None = None,
    ) -> Fault:
        """Make the next ``n`` requests matching ``method`` and ``path_contains`` answer with HTTP ``status``.

        ``path_contains`` is matched against the raw request path with its query string (and its unquoted form),
        e.g. ``"/commit/"``, ``"/preupload/"``, ``"/info/lfs/objects/batch"``, ``"/resolve/"``; uploads of LFS
        objects are ``PUT`` requests to ``/info/lfs/objects/{sha256}``. Returns the :class:`Fault`, whose ``hits``
        and ``remaining`` can be checked afterwards.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (4xx or 5xx)")
        fault = Fault(status=status, remaining=n, path_contains=path_contains, method=method)
        if message is not None:
            fault.message = message
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def create_repo(
        self, repo_id: str, *, repo_type: str = "model", private: bool = False, exist_ok: bool = True
    ) -> None:
        """Create a repository directly (no HTTP), with an empty initial commit on ``main``."""
        with self._lock:
            key = (repo_type, self._full_id(repo_id))
            if key in self._repos:
                if exist_ok:
                    return
                raise ValueError(f"{repo_type} repository {repo_id!r} already exists")
            repo = _Repo(repo_type=repo_type, repo_id=key[1], private=private, created_at=_now())
            initial = self._new_commit(None, "initial commit", "", {})
            repo.commits[initial.oid] = initial
            repo.branches[DEFAULT_BRANCH] = initial.oid
            self._repos[key] = repo

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        deletions: Iterable[str] = (),
        message: str = "Commit from HubServer.commit",
        revision: str = DEFAULT_BRANCH,
        repo_type: str = "model",
        lfs: bool | None = None,
    ) -> str:
        """Commit ``files`` (path -> bytes) directly (no HTTP) and return the new commit sha.

        ``lfs=None`` stores each file as the preupload endpoint would decide; ``True``/``False`` forces it.
        """
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if revision not in repo.branches:
                raise ValueError(f"No branch {revision!r} in {repo_id!r}")
            head = repo.commits[repo.branches[revision]]
            new_files = dict(head.files)
            for path in deletions:
                new_files.pop(path, None)
            for path, content in files.items():
                use_lfs = self._is_lfs(path, len(content), content[:512]) if lfs is None else lfs
                new_files[_check_repo_path(path)] = _Blob.make(bytes(content), lfs=use_lfs)
                if use_lfs:
                    repo.lfs_objects[new_files[path].sha256] = bytes(content)
            commit = self._new_commit(head.oid, message, "", new_files)
            repo.commits[commit.oid] = commit
            repo.branches[revision] = commit.oid
            return commit.oid

    def files(self, repo_id: str, *, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (branch or commit sha), as ``{path: bytes}``."""
        with self._lock:
            commit = self._resolve(self._repo(repo_type, repo_id), revision)
            return {path: blob.content for path, blob in sorted(commit.files.items())}

    def lfs_paths(self, repo_id: str, *, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> set[str]:
        """The paths stored in LFS at ``revision``."""
        with self._lock:
            commit = self._resolve(self._repo(repo_type, repo_id), revision)
            return {path for path, blob in commit.files.items() if blob.lfs}

    def head(self, repo_id: str, *, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> str:
        """The commit sha that ``revision`` points to."""
        with self._lock:
            return self._resolve(self._repo(repo_type, repo_id), revision).oid

    def commits(self, repo_id: str, *, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> list[str]:
        """Commit shas reachable from ``revision``, newest first (the initial commit last)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return [commit.oid for commit in self._history(repo, self._resolve(repo, revision))]

    def repo_ids(self, repo_type: str = "model") -> list[str]:
        with self._lock:
            return sorted(repo_id for kind, repo_id in self._repos if kind == repo_type)

    # ------------------------------------------------------------------ state internals

    def _full_id(self, repo_id: str) -> str:
        return repo_id if "/" in repo_id else f"{self.user}/{repo_id}"

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id)) or self._repos.get((repo_type, self._full_id(repo_id)))
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> _Commit:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        if _HEX_RE.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _history(repo: _Repo, commit: _Commit) -> list[_Commit]:
        history = [commit]
        while history[-1].parent is not None:
            history.append(repo.commits[history[-1].parent])
        return history

    def _new_commit(self, parent: str | None, title: str, description: str, files: dict[str, _Blob]) -> _Commit:
        self._counter += 1
        digest = hashlib.sha1(f"{parent}\n{title}\n{self._counter}\n{time.time_ns()}\n".encode() + os.urandom(8))
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].git_oid}\n".encode())
        return _Commit(digest.hexdigest(), parent, title, description, _now(), MappingProxyType(dict(files)))

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        if size >= self.lfs_threshold or path.lower().endswith(tuple(_LFS_SUFFIXES)):
            return True
        if b"\0" in sample:
            return True
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut by the end of the sample is still text.
            return not (exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data")
        return False

    def _take_fault(self, method: str, raw_path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, raw_path):
                    fault.remaining -= 1
                    fault.hits += 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _web_prefix(self, repo_type: str) -> str:
        return "" if repo_type == "model" else f"{_TYPE_TO_PLURAL[repo_type]}/"

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{self._web_prefix(repo.repo_type)}{repo.repo_id}"

    def _lfs_object_url(self, repo: _Repo, oid: str) -> str:
        return f"{self._repo_url(repo)}.git/info/lfs/objects/{oid}"

    # ------------------------------------------------------------------ request handling

    def _handle(self, method: str, raw_path: str, headers, body: bytes) -> _Response:
        split = urlsplit(raw_path)
        self.requests.append((method, split.path))
        fault = self._take_fault(method, raw_path)
        if fault is not None:
            return self._error(fault.status, fault.message)
        query = parse_qs(split.query)
        segments = [unquote(segment) for segment in split.path.split("/")[1:]]
        try:
            with self._lock:
                return self._route(method, segments, query, headers, body)
        except _HttpError as exc:
            return self._error(exc.status, exc.message, exc.code, exc.headers)
        except Exception as exc:  # a bug in the double: the traceback goes to the server's log, never to the client
            logger.exception("HubServer failed on %s %s", method, split.path[:200])
            return self._error(500, f"HubServer internal error ({type(exc).__name__}); see the server's log")

    @staticmethod
    def _error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> _Response:
        extra = dict(headers or {})
        if code is not None:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message.splitlines()[0][:500] if message else ""
        return _json({"error": message}, status, extra)

    def _route(self, method: str, segs: list[str], query, headers, body: bytes) -> _Response:
        if segs and segs[0] == "api":
            return self._route_api(method, segs[1:], query, body)
        repo_type = "model"
        if segs and segs[0] in _WEB_PREFIXES:
            repo_type, segs = _WEB_PREFIXES[segs[0]], segs[1:]
        # /{repo}.git/info/lfs/objects/...
        for i in (0, 1):
            if len(segs) > i + 3 and segs[i].endswith(".git") and segs[i + 1 : i + 4] == ["info", "lfs", "objects"]:
                repo_id = "/".join([*segs[:i], segs[i][: -len(".git")]])
                return self._route_lfs(method, self._repo(repo_type, repo_id), segs[i + 4 :], body)
        # /{repo}/resolve/{rev}/{path}
        for i in (1, 2):
            if len(segs) > i + 2 and segs[i] == "resolve" and method in ("GET", "HEAD"):
                repo = self._repo(repo_type, "/".join(segs[:i]))
                return self._resolve_file(repo, segs[i + 1], "/".join(segs[i + 2 :]), headers)
        raise _HttpError(404, f"HubServer: no route for {method} /{'/'.join(segs)}")

    def _route_api(self, method: str, segs: list[str], query, body: bytes) -> _Response:
        if segs == ["whoami-v2"] and method == "GET":
            return _json(
                {
                    "type": "user",
                    "name": self.user,
                    "fullname": self.user,
                    "email": None,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "hub-server", "role": "write"}},
                }
            )
        if segs == ["validate-yaml"] and method == "POST":
            return _json({"errors": [], "warnings": []})
        if segs == ["repos", "create"] and method == "POST":
            return self._api_create_repo(json.loads(body or b"{}"))
        if segs == ["repos", "delete"] and method == "DELETE":
            payload = json.loads(body or b"{}")
            name = payload.get("name", "")
            repo_id = f"{payload['organization']}/{name}" if payload.get("organization") else name
            repo = self._repo(payload.get("type") or "model", repo_id)
            del self._repos[(repo.repo_type, repo.repo_id)]
            return _json({})
        if not segs or segs[0] not in _PLURAL_TO_TYPE or len(segs) < 2:
            raise _HttpError(404, f"HubServer: no route for {method} /api/{'/'.join(segs)}")
        repo_type, rest = _PLURAL_TO_TYPE[segs[0]], segs[1:]
        if len(rest) >= 2 and rest[1] not in _API_ACTIONS:
            repo_id, tail = f"{rest[0]}/{rest[1]}", rest[2:]
        else:
            repo_id, tail = rest[0], rest[1:]
        repo = self._repo(repo_type, repo_id)
        action = tail[0] if tail else None

        if method == "GET" and action is None:
            return self._api_info(repo, DEFAULT_BRANCH, query)
        if method == "GET" and action == "revision" and len(tail) >= 2:
            return self._api_info(repo, "/".join(tail[1:]), query)
        if method == "GET" and action == "tree" and len(tail) >= 2:
            return self._api_tree(repo, tail[1], "/".join(tail[2:]), _flag(query, "recursive"))
        if method == "POST" and action == "paths-info" and len(tail) == 2:
            return self._api_paths_info(repo, tail[1], body)
        if method == "POST" and action == "preupload" and len(tail) == 2:
            return self._api_preupload(repo, tail[1], json.loads(body or b"{}"))
        if method == "POST" and action == "commit" and len(tail) == 2:
            if _flag(query, "create_pr"):
                raise _HttpError(501, "HubServer does not implement pull requests (create_pr=True).")
            return self._api_commit(repo, tail[1], body)
        if method == "GET" and action == "commits" and len(tail) == 2:
            return self._api_commits(repo, tail[1])
        if method == "GET" and action == "refs":
            return self._api_refs(repo)
        if action == "branch" and len(tail) >= 2:
            return self._api_branch(repo, method, "/".join(tail[1:]), json.loads(body or b"{}"))
        if action in ("xet-write-token", "xet-read-token"):
            raise _HttpError(
                501,
                "HubServer does not implement Xet storage: run the client with HF_HUB_DISABLE_XET=1 "
                "(huggingface_hub.constants.HF_HUB_DISABLE_XET = True) so that it uploads through Git LFS.",
            )
        raise _HttpError(404, f"HubServer: no route for {method} /api/{'/'.join(segs)}")

    # ------------------------------------------------------------------ API endpoints

    def _api_create_repo(self, payload: dict) -> _Response:
        name = payload.get("name")
        if not name:
            raise _HttpError(400, "Missing repository name")
        repo_type = payload.get("type") or "model"
        if repo_type not in _TYPE_TO_PLURAL:
            raise _HttpError(400, f"Invalid repository type {repo_type!r}")
        repo_id = f"{payload.get('organization') or self.user}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        if (repo_type, repo_id) in self._repos:
            repo = self._repos[(repo_type, repo_id)]
            return _json({"error": "You already created this repo", "url": self._repo_url(repo)}, 409)
        self.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=False)
        repo = self._repos[(repo_type, repo_id)]
        return _json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _api_info(self, repo: _Repo, revision: str, query) -> _Response:
        commit = self._resolve(repo, revision)
        with_blobs = _flag(query, "blobs")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling: dict = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(blob.content), blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {
                        "size": len(blob.content),
                        "sha256": blob.sha256,
                        "pointerSize": blob.pointer_size,
                    }
            siblings.append(sibling)
        info = {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(blob.content) for blob in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return _json(info)

    @staticmethod
    def _file_entry(path: str, blob: _Blob) -> dict:
        entry: dict = {"type": "file", "oid": blob.git_oid, "size": len(blob.content), "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": blob.pointer_size}
        return entry

    @staticmethod
    def _folder_entry(path: str, commit: _Commit) -> dict:
        digest = hashlib.sha1(path.encode())
        for file_path in sorted(commit.files):
            if file_path.startswith(path + "/"):
                digest.update(f"{file_path}\0{commit.files[file_path].git_oid}\n".encode())
        return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}

    @staticmethod
    def _folders(commit: _Commit) -> set[str]:
        return {str(parent) for path in commit.files for parent in PurePosixPath(path).parents if str(parent) != "."}

    def _api_tree(self, repo: _Repo, revision: str, path: str, recursive: bool) -> _Response:
        commit = self._resolve(repo, revision)
        path = path.strip("/")
        folders = self._folders(commit)
        if path and path not in folders:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        prefix = f"{path}/" if path else ""

        def wanted(candidate: str) -> bool:
            return candidate.startswith(prefix) and (recursive or "/" not in candidate[len(prefix) :])

        entries = [self._folder_entry(folder, commit) for folder in sorted(folders) if wanted(folder)]
        entries += [self._file_entry(p, blob) for p, blob in sorted(commit.files.items()) if wanted(p)]
        return _json(entries)

    def _api_paths_info(self, repo: _Repo, revision: str, body: bytes) -> _Response:
        commit = self._resolve(repo, revision)
        form = parse_qs(body.decode("utf-8"))
        if not form and body.strip().startswith(b"{"):
            form = {key: value if isinstance(value, list) else [value] for key, value in json.loads(body).items()}
        folders = self._folders(commit)
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                entries.append(self._file_entry(path, commit.files[path]))
            elif path in folders:
                entries.append(self._folder_entry(path, commit))
        return _json(entries)

    def _api_preupload(self, repo: _Repo, revision: str, payload: dict) -> _Response:
        commit = self._resolve(repo, revision)
        answers = []
        for item in payload.get("files", []):
            path = _check_repo_path(item.get("path", ""))
            sample = base64.b64decode(item.get("sample") or "")
            existing = commit.files.get(path)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if self._is_lfs(path, int(item.get("size", 0)), sample) else "regular",
                    "shouldIgnore": False,
                    "oid": existing.etag if existing is not None else None,
                }
            )
        return _json({"files": answers, "commitOid": commit.oid})

    def _api_commit(self, repo: _Repo, revision: str, body: bytes) -> _Response:
        if revision not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {revision} (commits go to an existing branch)", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        try:
            items = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        except ValueError as exc:
            raise _HttpError(400, f"Malformed NDJSON commit payload: {exc}") from exc
        header = next((item.get("value", {}) for item in items if item.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise _HttpError(400, "Commit payload needs a header with a summary")
        parent = header.get("parentCommit")
        if parent and not head.oid.startswith(parent):
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")

        # Build the new tree on a copy: nothing changes on the branch until every operation is valid.
        files = dict(head.files)
        for item in items:
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                continue
            path = _check_repo_path(
                str(value.get("path", "")).strip("/") if key == "deletedFolder" else value.get("path", "")
            )
            if key == "file":
                if value.get("encoding", "base64") == "base64":
                    content = base64.b64decode(value.get("content", ""))
                else:
                    content = str(value.get("content", "")).encode("utf-8")
                files[path] = _Blob.make(content, lfs=False)
            elif key == "lfsFile":
                oid = value.get("oid")
                content = repo.lfs_objects.get(oid)
                if content is None:
                    raise _HttpError(422, f"LFS object {oid} for {path!r} was not uploaded to this repository")
                if value.get("size") is not None and int(value["size"]) != len(content):
                    raise _HttpError(
                        422, f"LFS object {oid} for {path!r} has size {len(content)}, not {value['size']}"
                    )
                files[path] = _Blob.make(content, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise _HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise _HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise _HttpError(400, f"Unknown commit operation {key!r}")

        commit = self._new_commit(head.oid, header["summary"], header.get("description") or "", files)
        repo.commits[commit.oid] = commit
        repo.branches[revision] = commit.oid
        return _json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                "pullRequestUrl": None,
                "hookOutput": "",
            }
        )

    def _api_commits(self, repo: _Repo, revision: str) -> _Response:
        return _json(
            [
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.description,
                    "authors": [{"user": self.user, "avatar": None}],
                    "date": _iso(commit.date),
                }
                for commit in self._history(repo, self._resolve(repo, revision))
            ]
        )

    def _api_refs(self, repo: _Repo) -> _Response:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in sorted(repo.branches.items())
        ]
        return _json({"branches": branches, "converts": [], "tags": []})

    def _api_branch(self, repo: _Repo, method: str, name: str, payload: dict) -> _Response:
        if method == "POST":
            if name in repo.branches:
                raise _HttpError(409, f"Branch {name} already exists")
            start = self._resolve(repo, payload.get("startingPoint") or DEFAULT_BRANCH)
            repo.branches[name] = start.oid
            return _json({})
        if method == "DELETE":
            if name not in repo.branches:
                raise _HttpError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del repo.branches[name]
            return _json({})
        raise _HttpError(405, f"Method {method} not allowed on branches")

    # ------------------------------------------------------------------ Git LFS

    def _route_lfs(self, method: str, repo: _Repo, segs: list[str], body: bytes) -> _Response:
        lfs_headers = {"Content-Type": "application/vnd.git-lfs+json"}
        if segs == ["batch"] and method == "POST":
            payload = json.loads(body or b"{}")
            operation = payload.get("operation")
            if operation not in ("upload", "download"):
                raise _HttpError(400, f"Unsupported LFS operation {operation!r}")
            if "basic" not in payload.get("transfers", ["basic"]):
                raise _HttpError(422, "HubServer only implements the 'basic' LFS transfer")
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj.get("oid"), obj.get("size")
                answer: dict = {"oid": str(oid), "size": size if isinstance(size, int) else -1}
                stored = repo.lfs_objects.get(oid)
                if not isinstance(oid, str) or not _SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
                    answer["error"] = {"code": 422, "message": "Invalid oid or size"}
                elif operation == "download":
                    if stored is None:
                        answer["error"] = {"code": 404, "message": "Object does not exist"}
                    else:
                        answer["actions"] = {"download": {"href": self._lfs_object_url(repo, oid), "header": {}}}
                elif stored is None or len(stored) != size:
                    href = self._lfs_object_url(repo, oid)
                    answer["authenticated"] = True
                    answer["actions"] = {
                        "upload": {"href": href, "header": {}},
                        "verify": {"href": f"{href}/verify", "header": {}},
                    }
                objects.append(answer)
            return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, headers=lfs_headers)
        if len(segs) == 1 and _SHA256_RE.fullmatch(segs[0]):
            oid = segs[0]
            if method == "PUT":
                actual = hashlib.sha256(body).hexdigest()
                if actual != oid:
                    raise _HttpError(400, f"LFS upload content has sha256 {actual}, expected {oid}")
                repo.lfs_objects[oid] = body
                return 200, {}, b""
            if method in ("GET", "HEAD"):
                if oid not in repo.lfs_objects:
                    raise _HttpError(404, f"LFS object {oid} not found")
                return 200, {"Content-Type": "application/octet-stream"}, repo.lfs_objects[oid]
        if len(segs) == 2 and segs[1] == "verify" and method == "POST":
            payload = json.loads(body or b"{}")
            stored = repo.lfs_objects.get(segs[0])
            if stored is None or payload.get("oid") != segs[0] or len(stored) != payload.get("size"):
                raise _HttpError(404, f"LFS object {segs[0]} was not uploaded (or has another size)")
            return _json({"message": "ok"}, headers=lfs_headers)
        raise _HttpError(404, f"HubServer: no LFS route for {method} {'/'.join(segs)}")

    # ------------------------------------------------------------------ downloads

    def _resolve_file(self, repo: _Repo, revision: str, path: str, headers) -> _Response:
        commit = self._resolve(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        size = len(blob.content)
        out = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{blob.etag}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(PurePosixPath(path).name)}",
        }
        if blob.lfs:
            out["X-Linked-Etag"] = f'"{blob.sha256}"'
            out["X-Linked-Size"] = str(size)
        content = blob.content
        status = 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", (headers.get("Range") or "").strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(size - int(match.group(2)), 0), size - 1
            if start >= size or start > end:
                return 416, {**out, "Content-Range": f"bytes */{size}"}, b""
            content, status = blob.content[start : end + 1], 206
            out["Content-Range"] = f"bytes {start}-{end}/{size}"
        out["Content-Length"] = str(len(content))
        return status, out, content


class _BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries a Content-Length
    server_version = "HubServer/1.0"
    timeout = 60  # idle kept-alive connections are dropped after a minute
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.hub._lock:
            self.server.hub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _read_body(self) -> bytes:
        """The request body, at most ``max_body_bytes``; raises ``_BodyError`` for a malformed or too large one."""
        limit = self.server.hub.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(128)
                try:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise _BodyError(400, "malformed chunk size") from None
                if size < 0:
                    raise _BodyError(400, "malformed chunk size")
                total += size
                if total > limit:
                    raise _BodyError(413, f"request body larger than {limit} bytes")
                if size == 0:
                    for _ in range(64):  # trailers, bounded
                        if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        raw = self.headers.get("Content-Length") or "0"
        try:
            length = int(raw)
        except ValueError:
            raise _BodyError(400, "malformed Content-Length") from None
        if length < 0:
            raise _BodyError(400, "malformed Content-Length")
        if length > limit:
            raise _BodyError(413, f"request body larger than {limit} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        method = self.command
        try:
            body = self._read_body()
        except _BodyError as exc:
            # The rest of the body is never read, so the connection cannot be reused.
            self.close_connection = True
            status, headers, payload = HubServer._error(exc.status, exc.message)
            headers = {**headers, "Connection": "close"}
        else:
            status, headers, payload = self.server.hub._handle(method, self.path, self.headers, body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD" and payload:
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        logger.debug("HubServer %s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hub: HubServer):
        self.hub = hub
        super().__init__(address, _Handler)
