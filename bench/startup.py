"""Startup benchmark: seconds from `python app.py` to the first HTTP 200 on /, against a bare
`python -c "import gradio"` measured in the same run (ratio; goal < 1.5: torch and diffusers are imported lazily,
not at UI start).

    python bench/startup.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
           NO_PROXY="localhost,127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_import_gradio() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], check=True, env=ENV, cwd=ROOT)
    return time.perf_counter() - t


def time_app_start(timeout: float = 120.0) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--outputs-dir", out], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - t < timeout:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        if r.status == 200:
                            return time.perf_counter() - t
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("app did not answer within the timeout")
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    time_import_gradio()  # warm the file cache for both
    gr_t, app_t = [], []
    for _ in range(args.repeats):
        gr_t.append(time_import_gradio())
        app_t.append(time_app_start())
    g, a = statistics.median(gr_t), statistics.median(app_t)
    print(f"import gradio      : median {g:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in gr_t)})")
    print(f"python app.py -> 200: median {a:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in app_t)})")
    print(f"ratio app/import   : {a / g:.2f}x  (goal < 1.5)")


if __name__ == "__main__":
    main()
