"""Shared (LAN) use with --auth: users see and download only their own jobs and outputs; paths users type
cannot leave the allowed folders. One app with users alice and bob, driven over HTTP like a real client."""
from __future__ import annotations

import contextlib
import json
import socket
import urllib.parse

import pytest

PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}
TINY = {"prompt": "a red ball", "model": "tiny", "width": 96, "height": 64, "frames": 9, "seed": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_studio(tmp_path, users: dict[str, str] | None):
    """Launch the studio as app.py does (optionally with a users file): launch() itself installs the owner
    checks on the file routes and the path checks on the jobs. Returns (url, ctx, demo)."""
    from studio import auth
    from studio.app import launch
    from studio.context import StudioConfig

    auth_file = None
    if users:
        auth_file = tmp_path / "users.json"
        for name, pw in users.items():
            auth.add_user(auth_file, name, pw)
    cfg = StudioConfig(outputs_dir=str(tmp_path / "outputs"), port=free_port(),
                       auth_file=str(auth_file) if auth_file else None)
    demo, ctx = launch(cfg, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{cfg.port}/", ctx, demo


@contextlib.contextmanager
def running_studio(tmp_path, users: dict[str, str] | None):
    """launch_studio for the length of a with-block: (url, ctx), closed and its workers stopped afterwards."""
    url, ctx, demo = launch_studio(tmp_path, users)
    try:
        yield url, ctx
    finally:
        demo.close()
        ctx.jobs.shutdown(timeout=5)


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("lan"), PASSWORDS) as served:
        yield served


def login(url: str, name: str, password: str):
    import httpx

    c = httpx.Client(base_url=url, timeout=30)
    r = c.post("login", data={"username": name, "password": password})
    return c, r


def client(url: str, name: str):
    from gradio_client import Client

    return Client(url, auth=(name, PASSWORDS[name]), download_files=False, verbose=False)


def file_url(path: str) -> str:
    return "gradio_api/file=" + urllib.parse.quote(str(path))


@pytest.fixture(scope="module")
def alice_job(lan):
    url, ctx = lan
    a = client(url, "alice")
    job_id = a.predict(TINY, api_name="/generate")
    job = a.predict(job_id, 120, api_name="/wait")
    assert job["status"] == "done", job
    return job


def test_wrong_password_refused(lan):
    url, _ = lan
    _, r = login(url, "alice", "not-her-password")
    assert r.status_code in (400, 401)
    _, r = login(url, "mallory", "whatever-password")
    assert r.status_code in (400, 401)
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(url, auth=("alice", "bob-password"), download_files=False, verbose=False)


def test_outputs_only_for_their_owner(lan, alice_job):
    url, ctx = lan
    video = alice_job["result"]["video"]
    assert video.startswith(str(ctx.outputs_dir / "alice"))
    ca, r = login(url, "alice", PASSWORDS["alice"])
    assert r.status_code == 200
    got = ca.get(file_url(video))
    assert got.status_code == 200 and len(got.content) > 1000 and got.content[4:8] == b"ftyp"
    cb, r = login(url, "bob", PASSWORDS["bob"])
    assert r.status_code == 200
    assert cb.get(file_url(video)).status_code == 404
    assert cb.get("gradio_api/file/" + urllib.parse.quote(video)).status_code == 404  # the older route form
    assert cb.get("file=" + urllib.parse.quote(video)).status_code != 200  # no unprefixed route serves it
    assert cb.get("gradio_api/file=" + urllib.parse.quote(video).replace("/", "//")).status_code == 404
    import httpx

    assert httpx.get(url + file_url(video)).status_code in (401, 403, 404)  # not logged in
    # nobody downloads the jobs database, and traversal out of one's own folder is refused
    assert ca.get(file_url(ctx.outputs_dir / "jobs.sqlite3")).status_code == 404
    # (dots percent-encoded so the HTTP client does not normalise them away before they reach the server)
    sneaky = f"{ctx.outputs_dir}/bob/%2E%2E/alice/{alice_job['id']}/output.mp4"
    assert ca.get("gradio_api/file=" + sneaky).status_code == 404
    assert cb.get("gradio_api/file=" + sneaky).status_code == 404
    assert ca.get("gradio_api/file=" + f"{ctx.outputs_dir}/alice/%2E%2E/%2E%2E/%2E%2E/etc/passwd").status_code == 404
    assert ca.get(file_url("/etc/passwd")).status_code in (403, 404)


def test_job_ids_only_for_their_owner(lan, alice_job):
    url, _ = lan
    b = client(url, "bob")
    with pytest.raises(Exception, match="no job"):
        b.predict(alice_job["id"], api_name="/job")
    with pytest.raises(Exception):
        b.predict(alice_job["id"], api_name="/cancel")
    assert all(j["id"] != alice_job["id"] for j in b.predict(50, api_name="/jobs"))
    a = client(url, "alice")
    assert a.predict(alice_job["id"], api_name="/job")["status"] == "done"
    assert any(j["id"] == alice_job["id"] for j in a.predict(50, api_name="/jobs"))


@pytest.mark.parametrize("field,value", [
    ("image", "../../etc/passwd"),
    ("image", "/etc/passwd"),
    ("loras", [{"path": "../alice/x.safetensors", "weight": 1.0}]),
    ("controls", [{"path": "../../../../etc/hostname", "strength": 1.0, "kind": "depth"}]),
])
def test_path_fields_cannot_leave_allowed_folders(lan, alice_job, field, value):
    url, ctx = lan
    b = client(url, "bob")
    with pytest.raises(Exception, match="outside the folders"):  # refused at the API, before any job exists
        b.predict(dict(TINY, **{field: value}), api_name="/generate")
    # and a job submitted any other way meets the same check, at submit (the generate kind's check): nothing queued
    from pipelines.errors import UserError

    with pytest.raises(UserError, match="outside the folders"):
        ctx.jobs.submit("bob", "generate", dict(TINY, **{field: value}))


def test_path_checks_unit(tmp_path):
    from pipelines.errors import UserError
    from studio.guard import GuardState, has_parent_refs
    from studio.routes import PathChecker, check_request_paths

    root = tmp_path / "out" / "alice"
    root.mkdir(parents=True)
    (root / "a.png").write_bytes(b"x")
    ok = check_request_paths({"image": "a.png", "loras": [{"path": str(root / "a.png"), "weight": 1}]}, [root])
    assert ok["image"] == str(root / "a.png") and ok["loras"][0]["path"] == str(root / "a.png")
    with pytest.raises(UserError, match="loras\\[0\\].path"):
        check_request_paths({"loras": [{"path": "../../x", "weight": 1}]}, [root])
    assert has_parent_refs("a/../b") and has_parent_refs("a\\..\\b") and not has_parent_refs("a/..b")
    out = (tmp_path / "out").resolve()
    cache = tmp_path / "cache"
    (cache / "h1").mkdir(parents=True)
    upload = cache / "h1" / "clip.mp4"
    upload.write_bytes(b"x")
    state = GuardState(outputs_dir=out, public_dirs=[tmp_path / "assets"], cache_dir=cache,
                       authenticator=object())
    assert state.may_read(str(root / "a.png"), "alice")
    assert not state.may_read(str(root / "a.png"), "bob")
    assert not state.may_read(str(root / "a.png"), None)
    assert not state.may_read(str(out / "jobs.sqlite3"), "alice")
    assert not state.may_read("/usr/share/x.css", "alice")  # outside every served folder: refused by us too
    assert not state.may_read(str(upload), "alice")  # a cache file is nobody's until handed out
    state.files.record_text("alice", json.dumps({"path": str(upload)}))
    assert state.may_read(str(upload), "alice") and not state.may_read(str(upload), "bob")
    # the same ledger decides which cache files a request may name
    for who, allowed in (("alice", True), ("bob", False)):
        check = PathChecker([out / who], who, state.files)
        if allowed:
            assert check_request_paths({"clip": str(upload)}, check)["clip"] == str(upload.resolve())
        else:
            with pytest.raises(UserError, match="not one of your uploads"):
                check_request_paths({"clip": str(upload)}, check)
