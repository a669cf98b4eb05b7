"""The tiny model's demo IC-LoRAs (pipelines.models.demo_loras) and the fit checks a hand-off meets
(pipelines.fit): built from code and a seed in the official file format, valid for the tiny transformer, and
mismatches refused with a message before anything is queued."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipelines import fit
from pipelines.errors import UserError
from pipelines.models import demo_loras as demo


def _sha(p):
    """A digest of a safetensors file's content: its tensors and metadata (the header's key order is not stable:
    safetensors writes its metadata from a hash map)."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(p), framework="np") as f:
        h.update(repr(sorted((f.metadata() or {}).items())).encode())
        for k in sorted(f.keys()):
            h.update(k.encode() + f.get_tensor(k).tobytes())
    return h.hexdigest()


def test_demo_loras_are_official_files_built_deterministically(tmp_path):
    from safetensors import safe_open

    a = demo.build_demo_loras(tmp_path / "a")
    b = demo.build_demo_loras(tmp_path / "b")
    assert set(a) == {"union-control", "motion-track", "face", "detailer"}
    for key in a:
        assert _sha(a[key]) == _sha(b[key])  # same code + seed -> the same bytes
        with safe_open(str(a[key]), framework="np") as f:
            meta, keys = f.metadata(), list(f.keys())
        assert all(k.startswith("diffusion_model.transformer_blocks.") and
                   k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
        assert "random weights" in meta[demo.DEMO_KEY]
    assert {k: fit.lora_downscale([p]) for k, p in a.items()} == {"union-control": 2, "motion-track": 2, "face": 1,
                                                                 "detailer": 2}
    assert all(fit.is_ic_lora(p) for p in a.values())
    assert demo.demo_for(a["face"]).purpose == "face" and demo.demo_for(tmp_path / "x.safetensors") is None


def test_demo_lora_is_rebuilt_when_damaged_and_kept_when_current(tmp_path):
    p = demo.build_demo_lora(demo.DEMO_LORAS[0], tmp_path)
    before = p.stat().st_mtime_ns
    assert demo.build_demo_lora(demo.DEMO_LORAS[0], tmp_path).stat().st_mtime_ns == before  # kept
    good = _sha(p)
    p.write_bytes(b"truncated")
    assert not demo._current(p)
    assert _sha(demo.build_demo_lora(demo.DEMO_LORAS[0], tmp_path)) == good
    assert not list(tmp_path.glob(".*tmp"))  # no half-written file left


def test_demo_loras_load_into_the_tiny_transformer(tiny_model, tmp_path):
    from pipelines.models.lora import read_lora, validate_lora

    for key, path in demo.build_demo_loras(tmp_path).items():
        lf = read_lora(path)
        validate_lora(lf, tiny_model.pipe.transformer)  # every key maps to a Linear of the right shape
        assert lf.finite and lf.rank == demo.DEMO_RANK and lf.is_ic_lora
        assert len(lf.modules) == 2 * len(demo.TINY_TARGETS)


def test_sizes_must_fit_the_ic_lora_and_the_mask_its_reference(tmp_path):
    union = demo.build_demo_loras(tmp_path)["union-control"]
    base = {"width": 128, "height": 64, "frames": 9, "controls": [{"path": "c.mp4"}], "loras": [{"path": str(union)}]}
    fit.check_request(base)
    with pytest.raises(UserError, match="multiples of 64 \\(32 x D=2"):
        fit.check_request(dict(base, width=96))
    mask = tmp_path / "mask.npy"
    np.save(mask, np.zeros((9, 32, 64), np.float32))
    fit.check_request(dict(base, mask=str(mask)))
    np.save(mask, np.zeros((9, 64, 96), np.float32))  # painted at 96x64 with D=1: the reported mismatch
    with pytest.raises(UserError, match="mask.npy is 96x64 px but this output \\(128x64, D=2\\) needs a 64x32 mask"):
        fit.check_request(dict(base, mask=str(mask)))
    np.save(mask, np.zeros((17, 32, 64), np.float32))
    with pytest.raises(UserError, match="17 frames but the output has 9"):
        fit.check_request(dict(base, mask=str(mask)))
    with pytest.raises(UserError, match="does not exist"):
        fit.check_request(dict(base, mask=str(tmp_path / "gone.npy")))
    assert fit.size_hint(1) == "multiples of 32; frames 8n+1" and fit.size_multiple(2) == 64


@pytest.mark.parametrize("src, cur, multiple, want", [
    ((320, 240), (128, 64), 64, (256, 192)),   # 4:3 on the D=2 grid: exact
    ((320, 240), (768, 512), 64, (768, 576)),
    ((1080, 1920), (768, 512), 32, (448, 800)),  # portrait: nearest on the grid
    ((128, 64), (128, 64), 64, (128, 64)),      # already right: unchanged
])
def test_fit_aspect_follows_the_source(src, cur, multiple, want):
    got = fit.fit_aspect(*src, *cur, multiple)
    assert got == want and got[0] % multiple == 0 and got[1] % multiple == 0


def test_sample_dataset_is_four_captioned_clips(tmp_path):
    from pipelines.training.sample import make_sample_dataset
    from pipelines.video_io import probe

    paths = make_sample_dataset(tmp_path)
    videos = [p for p in paths if p.suffix == ".mp4"]
    assert len(videos) == 4 and all(p.with_suffix(".txt").read_text() for p in videos)
    info = probe(videos[2])
    assert (info.width, info.height, info.frames) == (128, 128, 17)
