"""LoRA files: official / kohya formats, metadata factors, validation naming the bad key, `lora inspect` CLI."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from pipelines.errors import UserError  # noqa: E402
from pipelines.models.lora import check_compatible, read_lora, save_lora, validate_lora  # noqa: E402

MODS = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn1.to_v"]


def _ab(transformer, rank=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mods = dict(transformer.named_modules())
    out = {}
    for m in MODS:
        lin = mods[m]
        out[m] = (torch.randn(rank, lin.in_features, generator=g) * 0.3,
                  torch.randn(lin.out_features, rank, generator=g) * 0.3)
    return out


def write_official(path, ab, meta):
    t = {}
    for m, (a, b) in ab.items():
        t[f"diffusion_model.{m}.lora_A.weight"] = a
        t[f"diffusion_model.{m}.lora_B.weight"] = b
    return save_lora(path, t, meta)


def write_kohya(path, ab, alpha, meta):
    from safetensors.torch import save_file

    t = {}
    for m, (a, b) in ab.items():
        k = "lora_unet_" + m.replace(".", "_")
        rank = a.shape[0]
        t[f"{k}.lora_down.weight"] = a
        t[f"{k}.lora_up.weight"] = b * (rank / alpha)  # so that alpha/rank * up == b
        t[f"{k}.alpha"] = torch.tensor(float(alpha))
    save_file(t, str(path), metadata=meta)
    return path


def test_official_d2_reads_and_validates(tiny_model, tmp_path):
    tr = tiny_model.pipe.transformer
    p = write_official(tmp_path / "ic.safetensors", _ab(tr), {"reference_downscale_factor": "2"})
    lf = read_lora(p)
    assert lf.reference_downscale_factor == 2 and lf.is_ic_lora and lf.rank == 4 and lf.finite
    validate_lora(lf, tr)
    assert check_compatible([lf]) == (2, 1)


def test_kohya_alpha_folded_equals_official(tiny_model, tmp_path):
    tr = tiny_model.pipe.transformer
    ab = _ab(tr)
    off = read_lora(write_official(tmp_path / "o.safetensors", ab, {"reference_downscale_factor": "2"}))
    names = {n for n, _ in tr.named_modules()}
    for alpha in (4.0, 2.0):
        k = read_lora(write_kohya(tmp_path / f"k{alpha}.safetensors", ab, alpha, {"reference_downscale_factor": "2"}),
                      names)
        assert k.source_format == "kohya" and k.modules == off.modules
        for key, t in off.tensors.items():
            assert torch.allclose(k.tensors[key], t, atol=1e-6), key


def test_nan_refused_with_key_named(tiny_model, tmp_path):
    ab = _ab(tiny_model.pipe.transformer)
    ab[MODS[1]][1][0, 0] = float("nan")
    lf = read_lora(write_official(tmp_path / "nan.safetensors", ab, {}))
    with pytest.raises(UserError, match=r"diffusion_model\.transformer_blocks\.1\.attn1\.to_v\.lora_B\.weight"):
        validate_lora(lf, tiny_model.pipe.transformer)


def test_wrong_shape_refused_with_key_named(tiny_model, tmp_path):
    ab = _ab(tiny_model.pipe.transformer)
    a, b = ab[MODS[0]]
    ab[MODS[0]] = (torch.randn(4, a.shape[1] * 2), b)
    lf = read_lora(write_official(tmp_path / "big.safetensors", ab, {}))
    with pytest.raises(UserError, match=r"transformer_blocks\.0\.attn1\.to_q\.lora_A\.weight"):
        validate_lora(lf, tiny_model.pipe.transformer)


def test_stack_factors_read_as_ic_lora_pipeline_does(tiny_model, tmp_path):
    """ltx-pipelines' ICLoraPipeline: a file without the key has factor 1, the stack takes the factor that is not 1,
    two different factors that are not 1 cannot be combined. The official trainer writes the key only when it is
    not 1, so an official D=1 IC-LoRA has no key at all."""
    ab = _ab(tiny_model.pipe.transformer)
    plain = read_lora(write_official(tmp_path / "plain.safetensors", ab, {}))
    d1 = read_lora(write_official(tmp_path / "d1.safetensors", ab, {"reference_downscale_factor": "1"}))
    d2 = read_lora(write_official(tmp_path / "d2.safetensors", ab, {"reference_downscale_factor": "2"}))
    d3 = read_lora(write_official(tmp_path / "d3.safetensors", ab, {"reference_downscale_factor": "3"}))
    t4 = read_lora(write_official(tmp_path / "t4.safetensors", ab, {"reference_temporal_scale_factor": "4"}))
    assert plain.reference_downscale_factor == 1 and not plain.is_ic_lora
    assert check_compatible([plain]) == (1, 1)
    assert check_compatible([d1, d2]) == (2, 1) and check_compatible([plain, d2]) == (2, 1)
    assert check_compatible([d2, t4]) == (2, 4)
    with pytest.raises(UserError, match="cannot be combined"):
        check_compatible([d2, d3])


def test_text_projection_keys_load_and_are_checked(tiny_model, tmp_path):
    """LoRAs with `text_embedding_projection.*` keys (diffusers loads them into the text connectors) are read and
    validated, not refused; ltx-pipelines 1.0.0 fuses LoRAs into the transformer only, so only the transformer part
    is applied (LoraFile.transformer_tensors)."""
    from safetensors.torch import save_file

    pipe = tiny_model.pipe
    ab = _ab(pipe.transformer)
    proj = dict(pipe.connectors.named_modules())["video_text_proj_in"]  # LTX-2.3: per-modality projections
    t = {f"diffusion_model.{m}.lora_{k}.weight": v for m, (a, b) in ab.items() for k, v in (("A", a), ("B", b))}
    t["text_embedding_projection.video_aggregate_embed.lora_A.weight"] = torch.randn(4, proj.in_features)
    t["text_embedding_projection.video_aggregate_embed.lora_B.weight"] = torch.randn(proj.out_features, 4)
    save_file(t, str(tmp_path / "tp.safetensors"))
    lf = read_lora(tmp_path / "tp.safetensors")
    assert lf.text_projection_modules == ["text_embedding_projection.video_aggregate_embed"]
    validate_lora(lf, pipe.transformer, pipe.connectors)
    assert set(lf.transformer_tensors()) == {k for k in t if k.startswith("diffusion_model.")}
    t["text_embedding_projection.video_aggregate_embed.lora_B.weight"] = torch.randn(proj.out_features + 1, 4)
    save_file(t, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match="text_embedding_projection.video_aggregate_embed"):
        validate_lora(read_lora(tmp_path / "bad.safetensors"), pipe.transformer, pipe.connectors)


def test_lora_changes_output_and_kohya_gives_same_output(tiny_engine, tmp_path):
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec
    from tests.helpers import synthetic_video

    ab = _ab(tiny_engine.m.pipe.transformer)
    off = write_official(tmp_path / "o.safetensors", ab, {"reference_downscale_factor": "2"})
    koh = write_kohya(tmp_path / "k.safetensors", ab, 2.0, {"reference_downscale_factor": "2"})
    ctrl = synthetic_video(tmp_path / "c.mp4", frames=9, width=64, height=32, seed=1)

    def gen(loras):
        req = GenerateRequest(prompt="a ball", width=128, height=64, frames=9, seed=1,
                              controls=[ControlInput(str(ctrl))], loras=[LoraSpec(str(p)) for p in loras])
        return tiny_engine.generate(req, write=False, previews=False)

    base = gen([])
    r_off = gen([off])
    r_koh = gen([koh])
    assert r_off.metadata["reference_downscale_factor"] == 2
    assert (r_off.frames.astype(int) - base.frames.astype(int)).__abs__().max() > 0
    assert abs(r_off.frames.astype(int) - r_koh.frames.astype(int)).max() <= 1


def test_cli_lora_inspect(tiny_model, tmp_path, capsys):
    from pipelines.cli import main

    p = write_official(tmp_path / "ic.safetensors", _ab(tiny_model.pipe.transformer), {"reference_downscale_factor": "2"})
    assert main(["lora", "inspect", str(p)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "official" and s["rank"] == 4 and s["reference_downscale_factor"] == 2 and s["finite"]
    assert "to_q" in s["target_modules"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["lora", "inspect", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error:")
