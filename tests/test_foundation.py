"""Foundation checks: light startup, model registry, single-file key fixes, CLI basics."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_ui_start_does_not_import_torch():
    code = ("import sys, studio.app, studio.context; "
            "bad=[m for m in ('torch','diffusers','transformers') if m in sys.modules]; print(bad); assert not bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_registry_reports_missing_files(tmp_path):
    from pipelines.models.registry import discover, get_spec
    from pipelines.errors import UserError

    (tmp_path / "ltx-2.3-22b-distilled.safetensors").write_bytes(b"x")
    specs = {s.name: s for s in discover(tmp_path)}
    assert specs["tiny"].ready
    dist = specs["ltx-2.3-distilled"]
    assert not dist.ready
    missing = {c.name: c.expected for c in dist.components if not c.found}
    assert "text_encoder" in missing and "gemma-3-12b-it" in missing["text_encoder"]
    try:
        get_spec("ltx-2.3-distilled", tmp_path)
    except UserError as exc:
        assert "gemma-3-12b-it" in str(exc)
    else:
        raise AssertionError("expected a UserError for missing files")


def test_registry_finds_diffusers_folder(tmp_path):
    from pipelines.models.registry import discover

    folder = tmp_path / "ltx-2.3-distilled-diffusers"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "connectors"):
        (folder / sub).mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    spec = {s.name: s for s in discover(tmp_path)}["ltx-2.3-distilled-diffusers"]
    assert spec.ready and spec.default_schedule == "distilled"


def test_single_file_key_fixes():
    from pipelines.models.loader import finish_vae_keys, fix_transformer_keys, protect_vae_keys

    t = fix_transformer_keys({"prompt_adaln_single.linear.weight": 1, "audio_prompt_adaln_single.emb.weight": 2,
                              "transformer_blocks.0.attn1.to_q.weight": 3})
    assert set(t) == {"prompt_adaln.linear.weight", "audio_prompt_adaln.emb.weight", "transformer_blocks.0.attn1.to_q.weight"}
    # protect -> diffusers' own converter -> finish: blocks 7/8 land on up_blocks.3 (upsampler / resnets)
    from diffusers.loaders.single_file_utils import convert_ltx2_vae_to_diffusers

    sd = {"vae.decoder.up_blocks.7.conv.weight": 7, "vae.decoder.up_blocks.8.res_blocks.0.conv1.weight": 8,
          "vae.decoder.up_blocks.1.conv.weight": 1, "vae.decoder.up_blocks.6.res_blocks.0.conv1.weight": 6}
    out = finish_vae_keys(convert_ltx2_vae_to_diffusers(protect_vae_keys(sd)))
    assert out["decoder.up_blocks.3.upsamplers.0.conv.weight"] == 7
    assert out["decoder.up_blocks.3.resnets.0.conv1.weight"] == 8
    assert out["decoder.up_blocks.0.upsamplers.0.conv.weight"] == 1
    assert out["decoder.up_blocks.2.resnets.0.conv1.weight"] == 6


def test_request_validation_messages():
    import pytest

    from pipelines.errors import UserError
    from pipelines.requests import GenerateRequest

    with pytest.raises(UserError, match="8n\\+1.*113"):
        GenerateRequest(prompt="x", frames=117).validate()
    with pytest.raises(UserError, match="multiple of 32"):
        GenerateRequest(prompt="x", width=721).validate()
    with pytest.raises(UserError, match="unknown setting"):
        GenerateRequest.from_dict({"prompt": "x", "fram": 9})
    r = GenerateRequest(prompt="x", width=96, height=64, frames=9)
    assert GenerateRequest.from_dict(json.loads(r.to_json())) == r


def test_tiny_generation_reproducible_and_valid(tiny_engine, tmp_path):
    import numpy as np

    from pipelines.requests import GenerateRequest
    from pipelines.video_io import probe

    req = GenerateRequest(prompt="a cat on a street", width=96, height=64, frames=17, fps=12.0, seed=7)
    a = tiny_engine.generate(req, tmp_path / "a.mp4", previews=False)
    b = tiny_engine.generate(req, tmp_path / "b.mp4", previews=False)
    info = probe(a.path)
    assert (info.width, info.height, info.frames, info.fps) == (96, 64, 17, 12.0)
    assert np.array_equal(a.frames, b.frames)
    assert json.loads(a.sidecar.read_text())["request"]["seed"] == 7
    c = tiny_engine.generate(GenerateRequest(prompt="a cat on a street", width=96, height=64, frames=17, fps=12.0, seed=8),
                             write=False, previews=False)
    assert not np.array_equal(a.frames, c.frames)


def test_tiny_image_to_video(tiny_engine, tmp_path):
    import cv2
    import numpy as np

    from pipelines.requests import GenerateRequest

    img = np.zeros((64, 96, 3), np.uint8)
    img[:, :48] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "first.png"), img)
    req = GenerateRequest(prompt="a man", width=96, height=64, frames=9, image=str(tmp_path / "first.png"))
    out = tiny_engine.generate(req, write=False, previews=False)
    plain = tiny_engine.generate(GenerateRequest(prompt="a man", width=96, height=64, frames=9), write=False, previews=False)
    assert out.frames.shape == (9, 64, 96, 3)
    assert not np.array_equal(out.frames, plain.frames)


def test_cli_probe_and_error(make_video, tmp_path):
    clip = make_video("c.mp4", frames=9)
    r = run_cli("probe", str(clip))
    assert r.returncode == 0 and json.loads(r.stdout)["frames"] == 9
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    r = run_cli("probe", str(bad))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_without_a_models_folder_the_official_models_are_listed_as_missing():
    from pipelines.errors import UserError
    from pipelines.models.registry import discover, get_spec

    specs = {s.name: s for s in discover(None)}
    assert specs["tiny"].ready
    dev = specs["ltx-2.3-dev"]
    assert not dev.ready and not any(c.found for c in dev.components)
    assert "ltx-2.3-22b-dev.safetensors" in [c.expected for c in dev.components]
    with pytest.raises(UserError, match="no models folder.*ltx-2.3-22b-dev.safetensors"):
        get_spec("ltx-2.3-dev", None)


def test_the_model_layer_does_not_reach_up_into_the_sampler():
    """pipelines/models/* import nothing from pipelines.sampler (the engine and trainer install what they need)."""
    import ast

    for path in (ROOT / "pipelines" / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("pipelines.sampler") for n in names), path.name


def test_loading_leaves_attention_alone_until_the_engine_installs_its_processor():
    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec
    from pipelines.sampler.attention import ReferenceBiasAttnProcessor
    from pipelines.sampler.engine import Engine

    m = ModelCache().get(tiny_spec())
    assert m.bias_state is None
    assert not any(isinstance(b.attn1.processor, ReferenceBiasAttnProcessor) for b in m.pipe.transformer.transformer_blocks)
    Engine(m)
    assert m.bias_state is not None
    assert all(isinstance(b.attn1.processor, ReferenceBiasAttnProcessor) for b in m.pipe.transformer.transformer_blocks)


def test_a_diffusers_format_folder_still_loads(tiny_model, tmp_path):
    """The diffusers-folder path (model_index.json) keeps working beside the official single file."""
    import torch

    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import get_spec

    tiny_model.pipe.save_pretrained(tmp_path / "ltx-2.3-distilled-diffusers")
    spec = get_spec("ltx-2.3-distilled-diffusers", tmp_path)
    loaded = ModelCache(dtype=torch.float32).get(spec)
    ours, ref = loaded.pipe.transformer.state_dict(), tiny_model.pipe.transformer.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert loaded.pipe.vocoder is not None and loaded.pipe.connectors is not None
