"""Bundled presets and the sample clip: every preset validates through the request types; broken files fail
with the file and the field named."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.config import ASSETS_DIR, PRESETS_DIR
from pipelines.errors import UserError
from pipelines.presets import (SAMPLE_CLIP, list_presets, load_preset, make_sample_clip, parse_preset,
                               sample_clip_frames)
from pipelines.requests import GenerateRequest

NAMES = ["union-canny", "union-depth", "union-pose"]


def test_bundled_presets_are_listed():
    assert set(NAMES) <= set(list_presets())


@pytest.mark.parametrize("name", NAMES)
def test_preset_request_validates_through_generate_request(name):
    data = json.loads((PRESETS_DIR / f"{name}.json").read_text())
    req = GenerateRequest.from_dict(data["request"]).validate()
    assert req.controls == [] and req.prompt.strip()
    # Union IC-LoRA (D=2) one-stage: target must be a multiple of 64
    assert req.width % 64 == 0 and req.height % 64 == 0 and (req.frames - 1) % 8 == 0
    p = load_preset(name)
    assert p.control_kind == name.split("-")[1]
    assert p.request.to_dict() == req.to_dict()
    assert p.ic_lora_match == "union-control"
    # round trip: what to_dict writes parses back to the same thing
    assert parse_preset(p.to_dict(), PRESETS_DIR / f"{name}.json").to_dict() == p.to_dict()


def test_canny_preset_uses_union_training_thresholds():
    p = load_preset("union-canny")
    assert (p.control_options["low_threshold"], p.control_options["high_threshold"]) == (92, 200)


def test_find_ic_lora_by_name():
    p = load_preset("union-depth")
    cands = ["/m/loras/style.safetensors", "/m/loras/LTX-2.3-22b-IC-LoRA-Union-Control.safetensors"]
    assert p.find_ic_lora(cands) == cands[1]
    assert p.find_ic_lora(cands[:1]) is None


def _write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _good():
    return json.loads((PRESETS_DIR / "union-canny.json").read_text())


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d["request"].update(frames=117), ["bad.json", "8n+1"]),
    (lambda d: d["request"].update(width=100), ["bad.json", "width=100"]),
    (lambda d: d.update(extra=1), ["bad.json", "unknown key", "extra"]),
    (lambda d: d["request"].update(colour="red"), ["bad.json", "colour"]),
    (lambda d: d["control"].update(kind="sketch"), ["bad.json", "sketch", "canny"]),
    (lambda d: d["control"]["options"].update(low_threshold=300), ["bad.json", "low=300"]),
    (lambda d: d["control"].update(strength=1.5), ["bad.json", "control.strength"]),
    (lambda d: d["request"].update(controls=[{"path": "x.mp4"}]), ["bad.json", "controls"]),
    (lambda d: d.pop("request"), ["bad.json", "request"]),
])
def test_broken_preset_is_a_clear_user_error(tmp_path, mutate, words):
    data = _good()
    mutate(data)
    with pytest.raises(UserError) as exc:
        load_preset(_write(tmp_path, data))
    for w in words:
        assert w in str(exc.value)


def test_invalid_json_and_unknown_name(tmp_path):
    with pytest.raises(UserError, match=r"bad.json: is not valid JSON .*line 1"):
        load_preset(_write(tmp_path, "{not json"))
    with pytest.raises(UserError, match="no preset 'nope'.*union-canny"):
        load_preset("nope")


def test_sample_clip_is_deterministic_small_and_valid(tmp_path):
    from pipelines.video_io import probe

    a, b = sample_clip_frames(), sample_clip_frames()
    assert a.shape == (49, 160, 256, 3) and np.array_equal(a, b)
    assert not np.array_equal(a[0], a[-1])  # things move
    path = make_sample_clip(tmp_path / "s.mp4")
    info = probe(path)
    assert (info.width, info.height, info.frames, info.fps) == (256, 160, 49, 24.0)
    assert path.stat().st_size < 300_000
    bundled = ASSETS_DIR / SAMPLE_CLIP
    assert bundled.is_file() and bundled.stat().st_size < 300_000
    assert probe(bundled).frames == 49
