"""Job work that tests and bench/scale.py run on any executor (importable by name on a Ray worker).

Each is a ``WorkFn`` target, ``fn(request, jc, env)``: real work through the job context's calls (progress,
outputs, cancel checks), written into the job's own folder like every job kind.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def wait_work(request: dict, jc, env) -> dict:
    """Waits ``seconds`` in small steps (a stand-in for a GPU kernel the host only waits on), reporting progress
    and checking for a cancel at every step; writes ``<owner>.txt`` (who ran it, where) into the job folder."""
    seconds = float(request.get("seconds", 1.0))
    steps = max(1, int(seconds / 0.05))
    marker = request.get("started_marker")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    for i in range(steps):
        jc.raise_if_cancelled()
        time.sleep(seconds / steps)
        jc.progress((i + 1) / steps, f"step {i + 1}/{steps}")
    out = Path(jc.out_dir) / f"{jc.owner}.txt"
    out.write_text(f"{jc.owner} {jc.job_id} pid {os.getpid()} attempt {getattr(jc, 'attempt', 1)}\n")
    jc.add_output(out)
    return {"file": str(out), "pid": os.getpid(), "owner": jc.owner}


def spin_work(request: dict, jc, env) -> dict:
    """Busy CPU work for ``seconds`` (what a compute-bound job costs a host with no GPU)."""
    seconds = float(request.get("seconds", 1.0))
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for _ in range(20000):
            x += 1
        jc.raise_if_cancelled()
    out = Path(jc.out_dir) / "spin.txt"
    out.write_text(str(x))
    jc.add_output(out)
    return {"file": str(out), "pid": os.getpid()}


def copy_work(request: dict, jc, env) -> dict:
    """Reads the request's ``clip`` (a path field) and writes it back reversed with a settings .json naming it:
    what the file transfer to a worker that does not share the studio's folders must carry both ways."""
    import json

    src = Path(request["clip"])
    data = src.read_bytes()
    out = Path(jc.out_dir) / "reversed.bin"
    out.write_bytes(data[::-1])
    (Path(jc.out_dir) / "preview").mkdir(exist_ok=True)
    prev = Path(jc.out_dir) / "preview" / "p.txt"
    prev.write_text("preview")
    jc.progress(0.5, "half", prev)
    side = Path(jc.out_dir) / "reversed.json"
    side.write_text(json.dumps({"clip": str(src), "video": str(out)}))
    jc.add_output(out)
    return {"video": str(out), "settings": str(side), "read_from": str(src)}
