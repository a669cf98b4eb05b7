"""A sample dataset for the Face trainer's first run: four short clips cut from the bundled sample clip (different
moments, crops and mirror images of the same moving shapes) with captions, so a newcomer can run the whole
training path on the tiny model without finding clips first. It is a smoke-test dataset, not a face: the UI says
so. Deterministic (the sample clip is built from code); written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

SAMPLE_CAPTION = "subj a textured subject moving"
# (first frame, x0, y0, mirrored) of each clip: 4 clips of 17 frames, 128x128 crops of the 256x160 sample
_CUTS = ((0, 0, 16, False), (8, 64, 0, False), (16, 128, 32, True), (24, 32, 24, True))
CLIP_FRAMES = 17
CLIP_SIDE = 128


def make_sample_dataset(folder: str | os.PathLike) -> list[Path]:
    """Write clip0..3.mp4 (+ .txt captions) into ``folder`` and return the paths (videos and captions)."""
    import numpy as np

    from pipelines.presets import sample_clip_path
    from pipelines.video_io import read_video, write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames, fps = read_video(sample_clip_path())
    out: list[Path] = []
    for i, (t0, x0, y0, mirror) in enumerate(_CUTS):
        clip = frames[t0:t0 + CLIP_FRAMES, y0:y0 + CLIP_SIDE, x0:x0 + CLIP_SIDE]
        if mirror:
            clip = clip[:, :, ::-1]
        video = write_video(folder / f"clip{i}.mp4", np.ascontiguousarray(clip), fps, crf=18, preset="veryfast")
        caption = folder / f"clip{i}.txt"
        tmp = caption.with_name(f".{caption.name}.{os.getpid()}.tmp")
        tmp.write_text(SAMPLE_CAPTION)
        os.replace(tmp, caption)
        out += [video, caption]
    return out


__all__ = ["make_sample_dataset", "SAMPLE_CAPTION"]
