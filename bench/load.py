"""Load bench: M gradio_client clients x N tiny generations against a studio on loopback, versus the same
M*N generations run back to back on pipelines.service.EngineService with no server. The studio runs as
`python app.py` in its own process, as users run it.

Prints throughput (jobs/s), queue wait p50/p95 (job started - submitted, from the job rows), light-endpoint
(/jobs) latency p50/p95 measured by a separate client polling during the load, and the ratio of server wall
time to the back-to-back baseline (the cost of the server, queue, polling and HTTP around the same GPU work).

    python bench/load.py --clients 4 --jobs 3
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--jobs", type=int, default=3, help="jobs per client")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--frames", type=int, default=9)
    args = p.parse_args()
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
    return 0 if res["done"] == n else 1


if __name__ == "__main__":
    sys.exit(main())
