"""Load bench: the studio served as users run it (`python app.py` in its own process), three scenarios.

throughput  M gradio_client clients x N tiny generations on loopback, versus the same M*N generations back
            to back on pipelines.service.EngineService with no server: throughput, queue wait p50/p95, the
            light /jobs endpoint's latency under load, and the ratio of server wall time to the baseline.
fairness    `app.py --auth`: 8 users x 3 jobs, once quiet and once while one user holds 50 /wait calls and an
            anonymous client floods /login with wrong passwords. Prints a watcher user's /jobs latency
            p50/p95 in both runs and their ratio (goal: stressed p95 <= 2x quiet and under 1 s).
oversized   one request of every kind far over the limits (frames, size, frames x pixels): each must be
            refused within 1 s, and the server's RSS must grow by under 100 MB.

    python bench/load.py                       # all three
    python bench/load.py --scenario fairness --users 8 --jobs 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def request(args, i: int) -> dict:
    return {"prompt": f"bench clip {i}", "model": "tiny", "width": args.width, "height": args.height,
            "frames": args.frames, "seed": i}


def baseline(args, tmp: Path) -> float:
    """M*N generations back to back on EngineService (after one warm-up), seconds."""
    from pipelines.requests import GenerateRequest
    from pipelines.service import EngineService

    svc = EngineService(models_dir=None)
    for w in range(2):  # the first calls load the model and warm torch's kernels
        svc.generate(GenerateRequest.from_dict(request(args, 900 + w)).validate(), tmp / f"warm{w}.mp4")
    t0 = time.perf_counter()
    for i in range(args.clients * args.jobs):
        svc.generate(GenerateRequest.from_dict(request(args, i)).validate(), tmp / f"base{i}.mp4")
    return time.perf_counter() - t0


def served(args, tmp: Path) -> dict:
    """The studio as users run it (`python app.py` in its own process, so the clients here do not share its
    interpreter), M gradio_client clients submitting at once, one more polling the light /jobs endpoint."""
    import socket
    import subprocess

    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--outputs-dir", str(tmp / "outputs")],
                            cwd=root, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                watcher = Client(url, download_files=False, verbose=False)
                break
            except Exception:  # noqa: BLE001  not up yet
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the studio did not start") from None
                time.sleep(0.5)
        for w in range(2):
            warm = watcher.predict(request(args, 900 + w), api_name="/generate")
            watcher.predict(warm, 600, api_name="/wait")
        clients = [Client(url, download_files=False, verbose=False) for _ in range(args.clients)]
        ids: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(args.clients)

        def run(k: int) -> None:
            barrier.wait()
            mine = [clients[k].predict(request(args, k * args.jobs + j), api_name="/generate") for j in range(args.jobs)]
            with lock:
                ids.extend(mine)
            for i in mine:
                clients[k].predict(i, 600, api_name="/wait")

        threads = [threading.Thread(target=run, args=(k,)) for k in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        lat = []
        while any(t.is_alive() for t in threads):
            s = time.perf_counter()
            watcher.predict(20, api_name="/jobs")
            lat.append(time.perf_counter() - s)
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        rows = {j["id"]: j for j in watcher.predict(200, api_name="/jobs")}
        jobs = [rows[i] for i in ids]
        return {"wall": wall, "done": sum(j["status"] == "done" for j in jobs),
                "waits": [j["started"] - j["created"] for j in jobs], "run": [j["finished"] - j["started"] for j in jobs],
                "lat": lat}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


class Studio:
    """`python app.py --auth users.json` in its own process, for the duration of a with-block."""

    def __init__(self, tmp: Path, users: list[str]):
        import socket

        from studio import auth

        self.tmp, self.users = tmp, users
        self.users_file = tmp / "users.json"
        for u in users:
            auth.add_user(self.users_file, u, f"{u}-password")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"

    def __enter__(self):
        import subprocess

        import httpx

        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, GRADIO_TEMP_DIR=str(self.tmp / "gradio-cache"))
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port), "--auth", str(self.users_file),
                                      "--outputs-dir", str(self.tmp / "outputs")], cwd=root, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the studio exited at start")
            try:
                if httpx.get(self.url, timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the studio did not start in 120 s")

    def __exit__(self, *exc):
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def client(self, user: str):
        from gradio_client import Client

        return Client(self.url, auth=(user, f"{user}-password"), download_files=False, verbose=False)

    def http(self, user: str):
        import httpx

        c = httpx.Client(base_url=self.url, timeout=60)
        c.post("login", data={"username": user, "password": f"{user}-password"}).raise_for_status()
        return c

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def _load_round(clients: dict, args, watcher, offset: int) -> dict:
    """Each user in ``clients`` submits ``args.jobs`` tiny generations at once and waits for them; ``watcher``
    polls /jobs meanwhile. Returns the watcher's latencies and the jobs' outcome."""
    users = list(clients)
    barrier = threading.Barrier(len(users))
    done = []

    def run(k: int, u: str) -> None:
        barrier.wait()
        mine = [clients[u].predict(request(args, offset + k * args.jobs + j), api_name="/generate")
                for j in range(args.jobs)]
        for i in mine:
            done.append(clients[u].predict(i, 600, api_name="/wait")["status"] == "done")

    threads = [threading.Thread(target=run, args=(k, u)) for k, u in enumerate(users)]
    for t in threads:
        t.start()
    lat = []
    while any(t.is_alive() for t in threads):
        s = time.perf_counter()
        watcher.predict(20, api_name="/jobs")
        lat.append(time.perf_counter() - s)
        time.sleep(0.2)
    return {"lat": lat, "done": sum(done), "n": len(users) * args.jobs}


def fairness(args, tmp: Path) -> dict:
    """Quiet round, then the same round while `holder` opens 50 /wait calls and an anonymous client floods
    /login; the watcher's /jobs latency in both."""
    import httpx

    users = [f"user{i}" for i in range(args.users)]
    with Studio(tmp, users + ["watcher", "holder"]) as studio:
        watcher = studio.client("watcher")
        clients = {u: studio.client(u) for u in users}  # logged in before the flood puts loopback in back-off
        warm = watcher.predict(request(args, 990), api_name="/generate")
        watcher.predict(warm, 600, api_name="/wait")
        quiet = _load_round(clients, args, watcher, 0)
        holder = studio.http("holder")
        stop = threading.Event()
        held = {"open": 0, "refused": 0, "logins": 0, "throttled": 0}

        events: list[str] = []

        def hold() -> None:
            time.sleep(1.5)  # after the round's jobs are queued: the holder's job is last, its waits stay open
            job = holder.post("gradio_api/call/generate", json={"data": [request(args, 995)]}).json()["event_id"]
            job_id = holder.get(f"gradio_api/call/generate/{job}").text.split("data:")[-1].strip().strip('[]"')
            for _ in range(50):
                events.append(holder.post("gradio_api/call/wait", json={"data": [job_id, 600]}).json()["event_id"])

        def flood() -> None:
            anon = httpx.Client(base_url=studio.url, timeout=30)
            while not stop.is_set():
                r = anon.post("login", data={"username": "user0", "password": "wrong-password"})
                held["logins"] += 1
                held["throttled"] += r.status_code == 429

        extra = [threading.Thread(target=hold), threading.Thread(target=flood)]
        for t in extra:
            t.start()
        time.sleep(1.0)
        stressed = _load_round(clients, args, watcher, 100)
        stop.set()
        for t in extra:
            t.join(60)
        for e in events:  # how each wait ended: the holder's job has finished by now
            text = holder.get(f"gradio_api/call/wait/{e}", timeout=120).text
            held["refused" if "wait calls open" in text else "open"] += 1
    return {"quiet": quiet, "stressed": stressed, "held": held}


OVERSIZED = [
    ("generate", "/generate", lambda a: [dict(request(a, 0), frames=100001)]),
    ("generate", "/generate", lambda a: [dict(request(a, 0), width=8192, height=8192)]),
    ("generate", "/generate", lambda a: [dict(request(a, 0), width=2048, height=2048, frames=1001)]),
    ("generate", "/generate", lambda a: [dict(request(a, 0), prompt="x" * 1_000_000)]),
    ("preprocess", "/preprocess", lambda a: ["SAMPLE", "canny", 2048, 2048, 100001, 24.0, {}]),
    ("preprocess", "/preprocess", lambda a: ["SAMPLE", "canny", 16384, 16384, 9, 24.0, {}]),
    ("tracks_render", "/tracks_render", lambda a: ["TRACKS", 2048, 2048, 1000]),
    ("tracks_render", "/tracks_render", lambda a: ["TRACKS", 16384, 16384, 9]),
]


def oversized(args, tmp: Path) -> dict:
    """One request of every kind far over the limits: refused within 1 s each, RSS growth < 100 MB."""
    import json as _json

    from gradio_client import handle_file

    from pipelines.config import ASSETS_DIR

    tracks = tmp / "tracks.json"
    tracks.write_text(_json.dumps({"tracks": [[{"x": 10, "y": 10}, {"x": 50, "y": 40}]]}))
    sample = next(ASSETS_DIR.glob("*.mp4"))
    with Studio(tmp, ["big"]) as studio:
        c = studio.client("big")
        c.predict(20, api_name="/jobs")
        rss0 = studio.rss_mb()
        rows = []
        for kind, api, make in OVERSIZED:
            payload = [handle_file(str(sample)) if x == "SAMPLE" else handle_file(str(tracks)) if x == "TRACKS" else x
                       for x in make(args)]
            t0 = time.perf_counter()
            try:
                out = c.predict(*payload, api_name=api)
                refused, msg = False, f"accepted: {str(out)[:80]}"
            except Exception as exc:  # noqa: BLE001  a refusal is an error answer
                refused, msg = True, str(exc).splitlines()[0][:110]
            rows.append({"kind": kind, "refused": refused, "seconds": time.perf_counter() - t0, "message": msg})
        time.sleep(1.0)
        rss1 = studio.rss_mb()
    return {"rows": rows, "rss_growth_mb": rss1 - rss0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", choices=["throughput", "fairness", "oversized", "all"], default="all")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--users", type=int, default=8, help="users in the fairness scenario")
    p.add_argument("--jobs", type=int, default=3, help="jobs per client / user")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--frames", type=int, default=9)
    args = p.parse_args()
    ok = True
    if args.scenario in ("throughput", "all"):
        ok &= throughput(args)
    if args.scenario in ("fairness", "all"):
        with tempfile.TemporaryDirectory() as d:
            res = fairness(args, Path(d))
        q, s, h = res["quiet"], res["stressed"], res["held"]
        q95, s95 = pct(q["lat"], .95), pct(s["lat"], .95)
        print(f"fairness: {args.users} users x {args.jobs} jobs; watcher's /jobs latency")
        print(f"  quiet     p50 {pct(q['lat'], .5) * 1000:.0f} ms  p95 {q95 * 1000:.0f} ms  ({len(q['lat'])} calls, "
              f"done {q['done']}/{q['n']})")
        print(f"  stressed  p50 {pct(s['lat'], .5) * 1000:.0f} ms  p95 {s95 * 1000:.0f} ms  ({len(s['lat'])} calls, "
              f"done {s['done']}/{s['n']})  while 1 user opened {h['open']} /wait calls ({h['refused']} refused) "
              f"and {h['logins']} wrong logins were sent ({h['throttled']} throttled)")
        print(f"  ratio stressed/quiet p95: {s95 / q95:.2f}x (goal <= 2 and p95 < 1 s)")
        ok &= q["done"] == q["n"] and s["done"] == s["n"]
    if args.scenario in ("oversized", "all"):
        with tempfile.TemporaryDirectory() as d:
            res = oversized(args, Path(d))
        print("oversized requests (goal: each refused within 1 s; server RSS growth < 100 MB)")
        for r in res["rows"]:
            print(f"  {r['kind']:<14} {'refused' if r['refused'] else 'ACCEPTED':<9} {r['seconds'] * 1000:6.0f} ms  "
                  f"{r['message']}")
        print(f"  server RSS growth: {res['rss_growth_mb']:.1f} MB")
        ok &= all(r["refused"] for r in res["rows"])
    return 0 if ok else 1


def throughput(args) -> bool:
    n = args.clients * args.jobs
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = baseline(args, tmp)
        res = served(args, tmp)
    print(f"load: {args.clients} clients x {args.jobs} jobs = {n} tiny generations "
          f"({args.width}x{args.height}x{args.frames})")
    print(f"  baseline (EngineService back to back): {base:.2f} s  {n / base:.3f} jobs/s  "
          f"{base / n:.2f} s/job")
    print(f"  server (loopback, gradio_client):      {res['wall']:.2f} s  {n / res['wall']:.3f} jobs/s  "
          f"done {res['done']}/{n}  run p50 {statistics.median(res['run']):.2f} s/job")
    print(f"  queue wait p50 {pct(res['waits'], .5):.2f} s  p95 {pct(res['waits'], .95):.2f} s")
    print(f"  light endpoint /jobs latency p50 {pct(res['lat'], .5) * 1000:.0f} ms  "
          f"p95 {pct(res['lat'], .95) * 1000:.0f} ms  max {max(res['lat']) * 1000:.0f} ms  ({len(res['lat'])} calls)")
    print(f"  ratio server/baseline wall: {res['wall'] / base:.2f}x")
    return res["done"] == n


if __name__ == "__main__":
    sys.exit(main())
