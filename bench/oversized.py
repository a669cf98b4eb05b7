"""Oversized requests of every kind, for the served studio: each must be refused within a second with no big
allocation (pipelines.limits checks sizes before anything is built from them). Imported by
tests/test_faults.py and usable by bench/load.py; run alone it prints each refusal's time against a studio it
launches in-process:

    python bench/oversized.py

Also builds the 4 MB zip that expands to 4 GB (``zip_bomb``) without compressing 4 GB: one 16 MiB block of
zeros is deflated once and its bytes written as 256 entries.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def zip_bomb(path: str | os.PathLike, entries: int = 256, entry_bytes: int = 16 << 20, *,
             declared: int | None = None) -> Path:
    """A zip of ``entries`` files of ``entry_bytes`` zeros each (256 x 16 MiB = 4 GiB from ~4 MB). With
    ``declared`` every entry's directory claims that many bytes instead (a zip that lies about its sizes)."""
    raw = bytes(entry_bytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(raw) + comp.flush()
    crc = zlib.crc32(raw)
    size = entry_bytes if declared is None else int(declared)
    local, central = bytearray(), bytearray()
    for i in range(entries):
        name = f"clip_{i:03d}.mp4".encode()
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(name), 0)
        local += name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0o100644 << 16, offset)
        central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, len(central), len(local), 0)
    path = Path(path)
    path.write_bytes(bytes(local) + bytes(central) + end)
    return path


def small_clip(path: str | os.PathLike, frames: int = 9, width: int = 64, height: int = 64) -> Path:
    import numpy as np

    from pipelines.video_io import write_video

    rng = np.random.default_rng(0)
    return write_video(path, rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8), 24.0)


def oversized_requests(client, tmp: str | os.PathLike) -> list[tuple[str, str, tuple]]:
    """(what, api_name, args) of requests that must be refused at once. Uploads the small inputs they name
    through ``client`` (a gradio_client.Client of the studio)."""
    from gradio_client import handle_file

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    clip = small_clip(tmp / "clip.mp4")
    server_clip = client.predict(handle_file(str(clip)), api_name="/upload")
    tracks = tmp / "tracks.json"
    tracks.write_text(json.dumps([[{"x": 10, "y": 20}, {"x": 100, "y": 50}]]))
    bomb = zip_bomb(tmp / "bomb.zip")
    big = {"prompt": "x", "width": 2048, "height": 2048, "frames": 1001}
    return [
        ("generate 2048x2048 x 1001 frames", "/generate", (big,)),
        ("generate 100001 frames", "/generate", ({"prompt": "x", "width": 768, "height": 512, "frames": 100001},)),
        ("generate 1 MB prompt", "/generate", ({"prompt": "x" * 1_000_000, "width": 96, "height": 64,
                                                "frames": 9},)),
        ("generate 1000 controls", "/generate", ({"prompt": "x", "width": 96, "height": 64, "frames": 9,
                                                  "controls": [{"path": server_clip}] * 1000},)),
        ("preprocess 100001 frames", "/preprocess", (handle_file(str(clip)), "canny", 768, 512, 100001, 24.0, {})),
        ("preprocess 2048x2048 x 1001", "/preprocess", (handle_file(str(clip)), "canny", 2048, 2048, 1001, 24.0,
                                                         {})),
        ("tracks_render 2048x2048 x 1000", "/tracks_render", (handle_file(str(tracks)), 2048, 2048, 1000)),
        ("tracks_render 100001 frames", "/tracks_render", (handle_file(str(tracks)), 128, 64, 100001)),
        ("train 1001-frame buckets", "/train", (_small_zip(tmp, clip), {"overrides": {"max_frames": 1001}})),
        ("train 4 MB zip bomb (4 GB)", "/train", (handle_file(str(bomb)), {})),
    ]


def _small_zip(tmp: Path, clip: Path):
    import zipfile

    from gradio_client import handle_file

    z = tmp / "clips.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(clip, clip.name)
    return handle_file(str(z))


def server_rss_mb(pid: int | None = None) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB of a process (default this one), from /proc (Linux)."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    values = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM"))}
    return int(values.get("VmRSS", 0)) / 1024, int(values.get("VmHWM", 0)) / 1024


def refuse_all(client, tmp) -> list[tuple[str, float, str]]:
    """Send every oversized request; (what, seconds, error text) for each. A request that is NOT refused is
    reported with error text "ACCEPTED"."""
    out = []
    for what, api, args in oversized_requests(client, tmp):
        t0 = time.perf_counter()
        try:
            client.predict(*args, api_name=api)
            text = "ACCEPTED"
        except Exception as exc:  # noqa: BLE001  gradio_client raises AppError with the server's message
            text = str(exc)
        out.append((what, time.perf_counter() - t0, text))
    return out


def main() -> int:
    import tempfile

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client

    from studio.app import launch
    from studio.context import StudioConfig

    with tempfile.TemporaryDirectory() as d:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo, ctx = launch(StudioConfig(outputs_dir=str(Path(d) / "out"), port=port), prevent_thread_lock=True,
                           quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
            rss0, _ = server_rss_mb()
            rows = refuse_all(client, Path(d) / "in")
            rss1, _ = server_rss_mb()
            for what, secs, text in rows:
                print(f"{what:34s} {secs * 1000:7.0f} ms  {text[:110]}")
            print(f"server RSS {rss0:.0f} MB -> {rss1:.0f} MB (+{rss1 - rss0:.0f} MB); "
                  f"slowest refusal {max(r[1] for r in rows):.2f} s (goal < 1 s)")
        finally:
            demo.close()
            ctx.jobs.shutdown(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
