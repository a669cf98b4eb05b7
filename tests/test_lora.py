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


def test_mixing_factors_refused(tiny_model, tmp_path):
    ab = _ab(tiny_model.pipe.transformer)
    a = read_lora(write_official(tmp_path / "d1.safetensors", ab, {"reference_downscale_factor": "1"}))
    b = read_lora(write_official(tmp_path / "d2.safetensors", ab, {"reference_downscale_factor": "2"}))
    with pytest.raises(UserError, match="cannot be combined"):
        check_compatible([a, b])


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
