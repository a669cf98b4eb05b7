"""The studio as users run it: `python app.py --listen --auth users.json` in its own process, users made with
`python -m studio.cli_users`, driven over HTTP by two logged-in users and an anonymous visitor.

Every file route is probed in many URL forms for every file a user must not get (another user's outputs and
uploads, the job database and its WAL, the browser-state secret, the users file, files outside the studio),
and every job endpoint is called across users. A leak is any 2xx answer with a body. Positive controls (the
owner gets their own file through the same forms) keep the probes honest.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password", "dave": "dave-password"}
TINY = {"prompt": "a red ball", "model": "tiny", "width": 96, "height": 64, "frames": 9, "seed": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict:
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "gradio-cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="localhost,127.0.0.1",
               no_proxy="localhost,127.0.0.1", PYTHONUNBUFFERED="1")
    env.pop("GRADIO_SERVER_NAME", None)
    return env


def users_cli(tmp: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    """`python -m studio.cli_users ...` exactly as the README says (password on stdin)."""
    return subprocess.run([sys.executable, "-m", "studio.cli_users", *args], cwd=ROOT, env=_env(tmp),
                          input=(password + "\n") if password else None, capture_output=True, text=True, timeout=60)


class Served:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.users = tmp / "users.json"
        self.outputs = (tmp / "outputs").resolve()
        self.cache = (tmp / "gradio-cache").resolve()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        for name, pw in PASSWORDS.items():
            r = users_cli(self.tmp, "add", str(self.users), name, "--password-stdin", password=pw)
            assert r.returncode == 0, r.stderr
        cmd = [sys.executable, "app.py", "--listen", "--auth", str(self.users), "--outputs-dir", str(self.outputs),
               "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(self.tmp), stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url, timeout=2).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("app.py did not start in 120 s:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def login(self, name: str, password: str | None = None):
        import httpx

        c = httpx.Client(base_url=self.url, timeout=60)
        r = c.post("login", data={"username": name, "password": password or PASSWORDS[name]})
        assert r.status_code == 200, (name, r.status_code, r.text)
        return c

    def client(self, name: str):
        from gradio_client import Client

        return Client(self.url, auth=(name, PASSWORDS[name]), download_files=False, verbose=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("served"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def alice(served):
    """Alice's things: a finished job (video + settings), an API upload and a raw cache upload."""
    from gradio_client import handle_file

    a = served.client("alice")
    job = a.predict(a.predict(TINY, api_name="/generate"), 180, api_name="/wait")
    assert job["status"] == "done", job
    img = served.tmp / "alice-frame.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(img), np.full((64, 96, 3), 200, np.uint8))
    api_upload = a.predict(handle_file(str(img)), api_name="/upload")
    ca = served.login("alice")
    r = ca.post("gradio_api/upload", files={"files": ("alice-secret.png", img.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    cache_upload = r.json()[0]
    assert Path(cache_upload).resolve().is_relative_to(served.cache)
    return {"job": job, "video": job["result"]["video"], "settings": job["result"]["settings"],
            "api_upload": api_upload, "cache_upload": cache_upload, "http": ca}


def url_forms(path: str, served: Served) -> list[tuple[str, str]]:
    """(label, URL path) for one target file: every way a URL can name it to Gradio's file routes."""
    p = str(path)
    q = urllib.parse.quote
    rel_cwd = os.path.relpath(p, ROOT)
    pid = served.proc.pid if served.proc else "self"
    enc_all = "".join(f"%{b:02X}" for b in p.encode())
    segs = p.strip("/").split("/")
    dotted = "/" + "/./".join(segs)
    forms = [
        ("plain", "gradio_api/file=" + q(p)),
        ("deprecated route", "gradio_api/file/" + q(p)),
        ("all percent-encoded", "gradio_api/file=" + enc_all),
        ("double slashes", "gradio_api/file=" + q(p).replace("/", "//")),
        ("leading double slash", "gradio_api/file=/" + q(p)),
        ("dot segments", "gradio_api/file=" + q(dotted)),
        ("trailing /.", "gradio_api/file=" + q(p) + "/."),
        ("trailing slash", "gradio_api/file=" + q(p) + "/"),
        ("/proc/self/root", "gradio_api/file=/proc/self/root" + q(p)),
        ("/proc/self/cwd", "gradio_api/file=/proc/self/cwd/" + q(rel_cwd)),
        ("/proc/<pid>/root", f"gradio_api/file=/proc/{pid}/root" + q(p)),
        ("relative to cwd", "gradio_api/file=" + q(rel_cwd)),
        ("encoded slashes", "gradio_api/file=" + p.replace("/", "%2F")),
        ("double route slash", "gradio_api//file=" + q(p)),
        ("file url", "gradio_api/file=file://" + q(p)),
        ("self fetch", "gradio_api/file=" + q(f"{served.url}gradio_api/file={p}")),
        ("proxy", "gradio_api/proxy=" + q(f"{served.url}gradio_api/file={p}")),
        ("no api prefix", "file=" + q(p)),
    ]
    out = served.outputs
    if Path(p).is_relative_to(out):
        rest = os.path.relpath(p, out)
        forms += [
            ("traversal from bob, encoded dots", f"gradio_api/file={out}/bob/%2E%2E/{q(rest)}"),
            ("traversal from bob, lower-case", f"gradio_api/file={out}/bob/%2e%2e/{q(rest)}"),
            ("traversal via uploads", f"gradio_api/file={out}/bob/uploads/%2E%2E/%2E%2E/{q(rest)}"),
        ]
    return forms


def probe(client, url_path: str, method: str = "GET") -> tuple[int, int]:
    import httpx

    try:
        r = client.request(method, url_path, headers={"Range": "bytes=0-"} if method == "RANGE" else None) \
            if method != "RANGE" else client.get(url_path, headers={"Range": "bytes=0-100"})
    except httpx.HTTPError:
        return 0, 0
    return r.status_code, len(r.content)


def test_file_routes_leak_nothing(served, alice):
    import httpx

    bob = served.login("bob")
    anon = httpx.Client(base_url=served.url, timeout=30)
    nobodys = {
        "jobs db": served.outputs / "jobs.sqlite3", "jobs db wal": served.outputs / "jobs.sqlite3-wal",
        "jobs db shm": served.outputs / "jobs.sqlite3-shm", "state secret": served.outputs / ".browser_state_secret",
        "users file": served.users, "server log": served.log, "passwd": Path("/etc/passwd"),
        "app source": ROOT / "app.py",
    }
    for name, p in nobodys.items():
        if name != "passwd" and "db" not in name:
            assert p.exists(), name  # the probes must aim at files that are really there
    assert (served.outputs / "jobs.sqlite3").exists() and (served.outputs / ".browser_state_secret").exists()
    alices = {"alice video": alice["video"], "alice settings": alice["settings"],
              "alice api upload": alice["api_upload"], "alice cache upload": alice["cache_upload"]}
    leaks = []
    tried = 0
    for clients, targets in (({"bob": bob, "anonymous": anon}, alices),
                             ({"alice": alice["http"], "bob": bob, "anonymous": anon}, nobodys)):
        for tname, target in targets.items():
            for label, url_path in url_forms(str(target), served):
                for who, c in clients.items():
                    for method in ("GET", "HEAD", "RANGE") if label == "plain" else ("GET",):
                        tried += 1
                        status, size = probe(c, url_path, method)
                        if 200 <= status < 300 and (size > 0 or method == "HEAD"):
                            leaks.append(f"{who} got {tname} via {label} ({method}): {status}, {size} bytes")
    print(f"file-route probes: {tried} tried, {len(leaks)} leaks")
    assert tried >= 100
    assert leaks == []
    # positive controls: the owner gets her own files through the forms that name them
    for label, url_path in url_forms(alice["video"], served):
        if label in ("plain", "deprecated route", "all percent-encoded", "trailing /.", "/proc/self/root",
                     "dot segments"):
            r = alice["http"].get(url_path)
            assert r.status_code == 200 and r.content[4:8] == b"ftyp", (label, r.status_code)
    assert alice["http"].get("gradio_api/file=" + urllib.parse.quote(alice["cache_upload"])).status_code == 200


def test_job_endpoints_across_users(served, alice):
    b = served.client("bob")
    job_id = alice["job"]["id"]
    for api_name, args in (("/job", (job_id,)), ("/wait", (job_id, 1)), ("/cancel", (job_id,)),
                           ("/resume", (job_id,)), ("/train_control", (job_id, "stop"))):
        with pytest.raises(Exception) as err:
            b.predict(*args, api_name=api_name)
        assert "no job" in str(err.value) or "not found" in str(err.value).lower(), (api_name, str(err.value))
    assert all(j["id"] != job_id for j in b.predict(100, api_name="/jobs"))
    a = served.client("alice")
    assert a.predict(job_id, api_name="/job")["status"] == "done"


def test_anonymous_refused_everywhere(served):
    import httpx

    anon = httpx.Client(base_url=served.url, timeout=30)
    names = ["generate", "upload", "preprocess", "tracks_render", "train", "train_control", "job", "wait", "cancel",
             "resume", "jobs", "models", "sweep", "upscale", "enhance"]
    for name in names:
        r = anon.post(f"gradio_api/call/{name}", json={"data": []})
        assert r.status_code in (401, 403), (name, r.status_code)
    for path in ("config", "gradio_api/info", "gradio_api/upload"):
        r = anon.post(path, files={"files": ("x.png", b"x")}) if path.endswith("upload") else anon.get(path)
        assert r.status_code in (401, 403), (path, r.status_code)


def test_cache_and_outputs_files_are_per_user(served, alice):
    """Bob cannot USE Alice's upload or output in a request, by any path form, from the API or raw HTTP."""
    b = served.client("bob")
    for field, value in (("image", alice["cache_upload"]), ("image", alice["video"]),
                         ("controls", [{"path": alice["cache_upload"], "strength": 1.0}]),
                         ("image", "/proc/self/root" + alice["cache_upload"]),
                         ("mask", alice["api_upload"])):
        with pytest.raises(Exception) as err:
            b.predict(dict(TINY, **{field: value}), api_name="/generate")
        assert "not yours" in str(err.value) or "not one of your uploads" in str(err.value) \
            or "outside the folders" in str(err.value) or "403" in str(err.value), (field, str(err.value))
    # a raw queue request naming the file is refused before Gradio runs anything
    bob = served.login("bob")
    r = bob.post("gradio_api/call/generate", json={"data": [dict(TINY, image=alice["cache_upload"])]})
    assert r.status_code == 403, r.text
    # the same request naming Bob's own upload gets through
    png = (served.tmp / "alice-frame.png").read_bytes()
    up = bob.post("gradio_api/upload", files={"files": ("bob.png", png, "image/png")}).json()[0]
    r = bob.post("gradio_api/call/generate", json={"data": [dict(TINY, image=up)]})
    assert r.status_code == 200, r.text


def test_preset_and_reference_paths_say_nothing_about_other_files(served, alice):
    """/train's preset and validation_reference must not read, or tell the existence of, outside files."""
    from gradio_client import handle_file

    b = served.client("bob")
    z = served.tmp / "data.zip"
    import zipfile

    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "no clips")
    answers = []
    for field, value in (("preset", "/etc/passwd.json"), ("preset", "../../../../etc/x.json"),
                         ("validation_reference", "/etc/passwd"), ("validation_reference", "/etc/no-such-file"),
                         ("validation_reference", alice["video"])):
        with pytest.raises(Exception) as err:
            b.predict(handle_file(str(z)), {field: value}, api_name="/train")
        answers.append(str(err.value))
        # another user's file is refused at the door (403), a file outside the studio by the path check
        assert "outside the folders" in str(err.value) or (value == alice["video"] and "403" in str(err.value)), \
            (field, value, str(err.value))
    # an existing and a missing file outside the roots get the same kind of answer
    assert answers[2].replace("/etc/passwd", "X") == answers[3].replace("/etc/no-such-file", "X")


def test_removed_or_repassworded_user_loses_sessions(served):
    carol, dave = served.login("carol"), served.login("dave")
    assert carol.get("config").status_code == 200 and dave.get("config").status_code == 200
    r = users_cli(served.tmp, "remove", str(served.users), "carol")
    assert r.returncode == 0, r.stderr
    r = users_cli(served.tmp, "add", str(served.users), "dave", "--force", "--password-stdin",
                  password="dave-new-password")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (carol.get("config").status_code == 200
                                           or dave.get("config").status_code == 200):
        time.sleep(0.5)
    assert carol.get("config").status_code == 401
    assert dave.get("config").status_code == 401
    assert carol.post("gradio_api/call/jobs", json={"data": [5]}).status_code in (401, 403)
    served.login("dave", "dave-new-password")  # the new password works


def test_wait_calls_are_capped_per_user_and_hold_no_threads(served, alice):
    """The report: one user holding 45 /wait calls made another user's /jobs take 31 s (Gradio's 40 worker
    threads were all blocked). Now an open wait is a coroutine, and one user holds at most a few."""
    import concurrent.futures as cf

    import httpx

    a = served.login("alice")
    # a job that stays queued or running while the waits are open
    slow = a.post("gradio_api/call/generate", json={"data": [dict(TINY, frames=121, width=512, height=320)]})
    slow_id = a.get(f"gradio_api/call/generate/{slow.json()['event_id']}").text.split("data:")[-1].strip().strip('[]"')
    assert len(slow_id) == 32, slow_id

    posted = []

    def hold_wait(_: int) -> str:  # POST then read the stream: the call is open until its answer comes
        with httpx.Client(base_url=served.url, cookies=a.cookies, timeout=120) as c:
            event = c.post("gradio_api/call/wait", json={"data": [slow_id, 30]}).json()["event_id"]
            posted.append(event)
            return c.get(f"gradio_api/call/wait/{event}").text

    bob = served.login("bob")  # logged in before: the question is whether its calls wait behind Alice's
    with cf.ThreadPoolExecutor(45) as pool:
        futures = [pool.submit(hold_wait, i) for i in range(45)]
        deadline = time.monotonic() + 60  # all 45 calls made, and the ones past the cap answered
        while time.monotonic() < deadline and (len(posted) < 45 or sum(f.done() for f in futures) < 45 - 8):
            time.sleep(0.2)
        open_now = sum(not f.done() for f in futures)
        t0 = time.perf_counter()
        event = bob.post("gradio_api/call/jobs", json={"data": [10]}).json()["event_id"]
        jobs = bob.get(f"gradio_api/call/jobs/{event}").text
        took = time.perf_counter() - t0
        texts = [f.result() for f in futures]
    refused = sum("wait calls open" in t for t in texts)
    # the old code blocked /jobs until the 30 s waits returned; a coroutine wait blocks nothing
    assert "event: complete" in jobs and took < 10.0, (took, jobs[-200:])
    assert open_now >= 1  # the measurement ran while waits were still open
    assert refused >= 45 - 8, [t[-120:] for t in texts[:3]]


def test_login_flood_is_throttled_and_costs_no_hashing(served, alice):
    """Run last (it puts the loopback address into back-off)."""
    import httpx

    anon = httpx.Client(base_url=served.url, timeout=30)
    codes, times = [], []
    for i in range(30):
        t0 = time.perf_counter()
        codes.append(anon.post("login", data={"username": f"mallory{i % 3}", "password": "wrong-password"}).status_code)
        times.append(time.perf_counter() - t0)
    assert 429 in codes, codes
    assert set(codes) <= {400, 429}
    refused_times = [t for c, t in zip(codes, times) if c == 429]
    assert max(refused_times) < 0.5, refused_times
    # a user already logged in is not affected
    assert alice["http"].get("config").status_code == 200
    r = anon.post("login", data={"username": "alice", "password": PASSWORDS["alice"]})
    assert r.status_code == 429 and "try again" in r.json()["detail"]
