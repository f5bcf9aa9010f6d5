"""HubServer, the local Hub-compatible test server, driven by the real huggingface_hub client: repos are created,
folders pushed (text inline, binaries through Git LFS), downloaded byte for byte, and failed pushes leave the
previous revision in place."""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

REPO = "tester/tiny-sparse"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_folder(root, seed=0):
    """A checkpoint-like folder: a text config, a >1 MB binary weights file, and nested folders with a PNG."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True)
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "seed": seed}))
    (root / "model.safetensors").write_bytes(rng.randbytes(1_200_000))
    (root / "images" / "density.png").write_bytes(PNG_MAGIC + rng.randbytes(2_000))
    (root / "nested" / "deeper" / "notes.md").write_text(f"# Notes {seed}\nsparsity: 0.9 ✓\n")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _tree(root):
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def _push(hub, folder, message="push"):
    api = HfApi(endpoint=hub.url, token="any-token")
    api.create_repo(REPO, exist_ok=True)
    return api.upload_folder(folder_path=folder, repo_id=REPO, commit_message=message)


def test_upload_folder_then_download_gives_the_same_bytes(hub_server, tmp_path):
    expected = _write_folder(tmp_path / "src")

    info = _push(hub_server, tmp_path / "src", "first")

    assert hub_server.files(REPO) == expected
    assert hub_server.lfs_paths(REPO) == {"model.safetensors", "images/density.png"}
    assert info.oid == hub_server.head(REPO) and len(info.oid) == 40
    assert info.repo_url.repo_id == REPO
    methods_paths = hub_server.requests
    assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in methods_paths
    assert sum(method == "PUT" for method, _ in methods_paths) == 2  # the two binaries, through LFS
    assert ("POST", f"/api/models/{REPO}/commit/main") in methods_paths
    assert not any("xet" in path for _, path in methods_paths)

    cached = snapshot_download(REPO, endpoint=hub_server.url, cache_dir=tmp_path / "cache")
    assert _tree(cached) == expected
    local = snapshot_download(REPO, endpoint=hub_server.url, local_dir=tmp_path / "local")
    assert _tree(local) == expected
    png = hf_hub_download(REPO, "images/density.png", endpoint=hub_server.url, cache_dir=tmp_path / "single")
    assert open(png, "rb").read() == expected["images/density.png"]


def test_second_commit_replaces_one_file_and_keeps_the_old_revision(hub_server, tmp_path):
    src = tmp_path / "src"
    first = _write_folder(src)
    old_sha = _push(hub_server, src, "first").oid
    (src / "config.json").write_text('{"model_type": "bert", "changed": true}')
    n_before = len(hub_server.requests)

    new_sha = _push(hub_server, src, "second").oid

    assert new_sha != old_sha and hub_server.commits(REPO)[:2] == [new_sha, old_sha]
    assert hub_server.files(REPO) == {**first, "config.json": (src / "config.json").read_bytes()}
    assert hub_server.files(REPO, revision=old_sha) == first
    # Unchanged binaries are already on the server: nothing is uploaded again.
    assert not any(method == "PUT" for method, _ in hub_server.requests[n_before:])

    # The fixture points huggingface_hub's defaults at the server: no endpoint needed.
    latest = snapshot_download(REPO, cache_dir=tmp_path / "cache")
    assert _tree(latest) == hub_server.files(REPO)
    old = snapshot_download(REPO, revision=old_sha, cache_dir=tmp_path / "cache")
    assert _tree(old) == first


@pytest.mark.parametrize(
    "fault",
    [
        dict(path_contains="/commit/", status=500),  # the commit POST is not retried by the client
        dict(method="PUT", path_contains="/info/lfs/objects/", status=507),  # an LFS upload, mid-push
    ],
    ids=["commit", "lfs-upload"],
)
def test_interrupted_push_raises_keeps_previous_revision_and_retry_succeeds(hub_server, tmp_path, fault):
    src = tmp_path / "src"
    first = _write_folder(src)
    old_sha = _push(hub_server, src, "first").oid
    second = _write_folder(tmp_path / "src2", seed=1)
    injected = hub_server.fail_next(**fault)

    with pytest.raises((HfHubHTTPError, RuntimeError)) as excinfo:
        _push(hub_server, tmp_path / "src2", "second")

    chain, exc = [], excinfo.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    http_errors = [e for e in chain if isinstance(e, HfHubHTTPError)]
    assert http_errors and http_errors[0].response.status_code == fault["status"]
    assert injected.hits == 1 and injected.remaining == 0
    assert hub_server.head(REPO) == old_sha
    assert hub_server.files(REPO) == first
    assert _tree(snapshot_download(REPO, endpoint=hub_server.url, cache_dir=tmp_path / "c1")) == first

    retried = _push(hub_server, tmp_path / "src2", "second, again")

    assert retried.oid != old_sha and hub_server.files(REPO) == second
    assert _tree(snapshot_download(REPO, endpoint=hub_server.url, cache_dir=tmp_path / "c2")) == second


def test_invalid_commit_changes_nothing(hub_server, tmp_path):
    expected = _write_folder(tmp_path / "src")
    old_sha = _push(hub_server, tmp_path / "src", "first").oid
    api = HfApi(endpoint=hub_server.url, token="any-token")
    operations = [
        CommitOperationAdd("config.json", b'{"would": "replace"}'),
        CommitOperationDelete("no/such/file.txt"),
    ]

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_commit(REPO, operations, commit_message="bad")

    assert excinfo.value.response.status_code == 404
    assert hub_server.head(REPO) == old_sha and hub_server.files(REPO) == expected


def test_fresh_process_reaches_the_server_through_hf_endpoint(hub_server, tmp_path):
    expected = _write_folder(tmp_path / "src")
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from huggingface_hub import HfApi, constants, snapshot_download

        assert constants.ENDPOINT == os.environ["HF_ENDPOINT"] and not constants.HF_HUB_OFFLINE
        api = HfApi(token="any-token")
        api.create_repo({REPO!r}, exist_ok=True)
        info = api.upload_folder(folder_path={str(tmp_path / "src")!r}, repo_id={REPO!r}, commit_message="from child")
        path = snapshot_download({REPO!r}, cache_dir={str(tmp_path / "cache")!r})
        print(info.oid, path)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(
        HF_ENDPOINT=hub_server.url,
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",  # hf_xet is installed: without this the client uploads through Xet
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )

    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    oid, path = proc.stdout.split()
    assert oid == hub_server.head(REPO)
    assert hub_server.files(REPO) == expected
    assert _tree(path) == expected


# ---------------------------------------------------------------------------------------------- hostile clients


def _raw_request(hub, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes to the server; the status code and the whole response (the server closes after an error)."""
    import socket

    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(
            next((h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
        )
        while len(rest) < length:
            part = sock.recv(65536)
            if not part:
                break
            rest += part
    return int(head.split(b" ")[1]), rest


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org", "", 7])
def test_server_refuses_non_loopback_hosts(host):
    from hub_server import HubServer

    with pytest.raises(ValueError, match="loopback"):
        HubServer(host=host)


def test_server_binds_a_non_loopback_host_only_when_told_to():
    from hub_server import HubServer

    assert HubServer(host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"
    assert HubServer(host="127.0.0.2").host == "127.0.0.2"
    assert HubServer(host="localhost").host == "localhost"


def test_server_refuses_bodies_over_its_limit_without_reading_them(hub_server, monkeypatch):
    monkeypatch.setattr(hub_server, "max_body_bytes", 1000)
    # A declared length of 10 GB: answered at once (the body is never sent), not buffered.
    status, body = _raw_request(
        hub_server, b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
    )
    assert status == 413 and b"larger than 1000 bytes" in body
    chunked = b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, body = _raw_request(hub_server, chunked + b"800\r\n" + b"a" * 0x800 + b"\r\n0\r\n\r\n")
    assert status == 413
    for bad in (b"Content-Length: -5\r\n", b"Content-Length: lots\r\n", b"Transfer-Encoding: chunked\r\n"):
        tail = b"zz\r\n" if b"chunked" in bad else b""
        status, body = _raw_request(
            hub_server, b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n" + tail
        )
        assert status == 400, (bad, body)
    # The server still works for a well-formed request.
    HfApi(endpoint=hub_server.url, token="t").create_repo("u/small", exist_ok=True)
    assert "u/small" in hub_server.repo_ids()


def test_internal_errors_never_send_a_traceback(hub_server, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("secret /home/user/path")

    monkeypatch.setattr(hub_server, "_route", broken)
    status, body = _raw_request(hub_server, b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 500
    assert b"Traceback" not in body and b"secret" not in body and b".py" not in body
    assert b"KeyError" in body
