"""The detail / upscale pass (issue 15.1) on the built-in model: 2x with the frames kept, tiled execution equal to
the untiled pass where that is exact, no seams at tile borders (measured), the Detailer IC-LoRA pass, the job
kind, the API-facing checks and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.errors import UserError
from pipelines.sampler.upscale import UpscaleRequest, source_prompt, upscale_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from tests.helpers import synthetic_video

    return str(synthetic_video(tmp_path_factory.mktemp("up") / "clip.mp4", frames=17, width=128, height=96))


def test_spatial_upscale_doubles_the_size_and_keeps_the_frames(tiny_engine, clip, tmp_path):
    from pipelines.video_io import probe, read_comment

    events = []
    res = upscale_video(tiny_engine, UpscaleRequest(video=clip, prompt="a ball"), tmp_path / "up.mp4",
                        on_step=lambda phase, msg, f: events.append((phase, f)))
    info = probe(res.path)
    assert (info.width, info.height, info.frames) == (256, 192, 17)
    assert res.frames.shape == (17, 192, 256, 3)
    meta = json.loads(read_comment(res.path))
    assert meta["kind"] == "upscale" and meta["source"]["width"] == 128 and meta["plan"]["count"] == 1
    assert meta["sigmas"] == [0.909375, 0.725, 0.421875, 0.0] and meta["model_passes"] == 3
    assert json.loads(res.sidecar.read_text())["prompt"] == "a ball"
    fr = [f for _, f in events]
    assert fr == sorted(fr) and {"encode", "upsample", "denoise", "decode", "write"} <= {p for p, _ in events}
    # the pass refines the upscaled video, it does not replace it: the result still looks like the source
    from pipelines.video_io import read_video

    src = read_video(clip)[0].astype(np.float32)
    small = torch.nn.functional.avg_pool2d(torch.from_numpy(res.frames.astype(np.float32)).permute(0, 3, 1, 2), 2)
    other = np.roll(src, 7, axis=2)
    near = np.abs(small.permute(0, 2, 3, 1).numpy() - src).mean()
    assert near < np.abs(small.permute(0, 2, 3, 1).numpy() - other).mean()


def test_a_one_tile_plan_is_the_untiled_pass_bit_for_bit(tiny_engine, clip):
    plain = upscale_video(tiny_engine, UpscaleRequest(video=clip, seed=4), write=False)
    tiled = upscale_video(tiny_engine, UpscaleRequest(video=clip, seed=4), write=False, force_tiled=True)
    assert torch.equal(plain.latent, tiled.latent) and np.array_equal(plain.frames, tiled.frames)


def test_tiled_denoiser_equals_untiled_for_a_token_local_model():
    """The tiling machinery itself (sub-states with global positions, a reference window per tile, the blend, the
    Euler loop on the whole latent) is exact: with a denoiser whose prediction of a token depends only on that
    token and its position, a 12-tile plan gives the untiled result."""
    from pipelines.sampler import state as S
    from pipelines.sampler.denoise import euler_loop
    from pipelines.sampler.tiled import tiled_denoiser
    from pipelines.sampler.tiles import plan_tiles

    plan = plan_tiles(256, 192, 41, tile_width=128, tile_height=128, tile_frames=17, overlap=64, overlap_frames=8,
                      references=1, downscale=2)
    assert plan.count > 4
    g = torch.Generator().manual_seed(0)
    f, h, w = plan.grid
    st = S.video_state((1, 8, f, h, w), 24.0, torch.float32, "cpu", initial=torch.randn(1, 8, f, h, w, generator=g))
    st = S.append_reference(st, torch.randn(1, 8, f, h // 2, w // 2, generator=g), 24.0, downscale=2,
                            strength=0.6, attention=0.7)
    st = S.add_noise(st, g, 1.0)
    audio = S.audio_state(1, 2, 4, torch.float32, "cpu")
    sigmas = torch.tensor([1.0, 0.7, 0.4, 0.0])

    def local(video, aud, sig, i):  # depends on each token's own value and GLOBAL position only
        pos = video.positions[0, :, :, 0].T  # [T, 3]
        return torch.tanh(video.latent) * (1 + 0.01 * pos.sum(-1, keepdim=True)) * (1 - sig[i]), aud.latent

    seen = []
    untiled, _ = euler_loop(sigmas, st, audio, local, None, audio_on=False)
    tiled, _ = euler_loop(sigmas, st, audio, tiled_denoiser(lambda i: local, plan,
                                                            before_tile=lambda sub: seen.append(sub.num_target)),
                          None, audio_on=False)
    assert torch.allclose(tiled.latent, untiled.latent, atol=1e-6)
    assert set(seen) == {t.tokens for t in plan.tiles}


def _seam_ratio(tiled, base, cols) -> float:
    """How much the tiled result's departure from the untiled one jumps across tile borders, relative to how much
    it changes between neighbouring latent columns elsewhere (1 = no seam)."""
    d = (tiled.latent - base.latent)[0].float()
    jump = (d[..., 1:] - d[..., :-1]).abs().mean(dim=(0, 1, 2))
    at = np.mean([jump[c - 1].item() for c in cols])
    rest = np.mean([jump[i].item() for i in range(len(jump)) if i + 1 not in cols])
    return at / rest


def test_tiled_upscale_has_no_seams(tiny_engine, clip):
    from pipelines.sampler.tiles import plan_tiles

    base = upscale_video(tiny_engine, UpscaleRequest(video=clip, noise=1.0), write=False)
    req = UpscaleRequest(video=clip, noise=1.0, tile_width=128, tile_height=192, overlap=64)
    linear = upscale_video(tiny_engine, req, write=False)
    hard = upscale_video(tiny_engine, req, write=False, blend="hard")
    plan = plan_tiles(256, 192, 17, tile_width=128, tile_height=192, overlap=64)
    cols = plan.border_columns()
    assert plan.count == 3 and cols == [3, 5]
    r_lin, r_hard = _seam_ratio(linear, base, cols), _seam_ratio(hard, base, cols)
    diff = np.abs(linear.frames.astype(np.float32) - base.frames).mean()
    print(f"seam ratio at tile borders: linear blend {r_lin:.3f}, hard cut {r_hard:.3f}; "
          f"|tiled - untiled| {diff:.3f}/255")
    assert r_lin <= 1.05  # the step across a border is no larger than between any two columns
    assert r_hard >= 1.15 and r_hard > r_lin + 0.2  # the measure does see a seam when there is one
    assert diff < 2.0
    assert linear.metadata["plan"]["count"] == 3 and linear.metadata["model_passes"] == 4 * 3


def test_detailer_pass_uses_the_video_as_its_reference(tiny_engine, clip, tmp_path):
    from pipelines.models.demo_loras import DEMO_LORAS, build_demo_lora

    det = next(d for d in DEMO_LORAS if d.key == "detailer")
    lora = str(build_demo_lora(det, tmp_path))
    res = upscale_video(tiny_engine, UpscaleRequest(video=clip, mode="detailer", lora=lora), tmp_path / "d.mp4")
    assert res.frames.shape == (17, 192, 256, 3) and res.metadata["reference_downscale_factor"] == 2
    # tiled: each tile carries its window of the reference (target cells / D)
    tiled = upscale_video(tiny_engine, UpscaleRequest(video=clip, mode="detailer", lora=lora, tile_width=128,
                                                      tile_height=192, overlap=64), write=False)
    assert tiled.metadata["plan"]["references"] == 1 and tiled.metadata["plan"]["count"] == 3
    assert np.abs(tiled.frames.astype(np.float32) - res.frames).mean() < 3.0
    plain = upscale_video(tiny_engine, UpscaleRequest(video=clip), write=False)
    assert not np.array_equal(plain.frames, res.frames)  # the IC-LoRA and the reference change the result
    with pytest.raises(UserError, match="Detailer IC-LoRA"):
        UpscaleRequest(video=clip, mode="detailer").validate()


def test_requests_and_plans_are_checked(tiny_engine, clip):
    with pytest.raises(UserError, match="unknown upscale setting"):
        UpscaleRequest.from_dict({"video": clip, "scale": 4})
    with pytest.raises(UserError, match="noise"):
        UpscaleRequest(video=clip, noise=0).validate()
    with pytest.raises(UserError, match="multiple of 32"):
        upscale_video(tiny_engine, UpscaleRequest(video=clip, tile_width=100), write=False)
    assert source_prompt(clip) == ""


def test_upscale_job_from_a_finished_generation(tmp_path):
    """A generation's result goes through the upscale kind by its job id: 2x, its prompt taken along."""
    from studio.context import StudioConfig, build_context

    ctx = build_context(StudioConfig(outputs_dir=str(tmp_path / "out")))
    try:
        g = ctx.submit("alice", "generate", {"prompt": "a red ball", "width": 64, "height": 64, "frames": 9,
                                              "audio": False})
        assert ctx.jobs.wait(g, timeout=120).status.value == "done"
        u = ctx.submit("alice", "upscale", {"source_job": g})
        job = ctx.jobs.wait(u, timeout=300)
        assert job.status.value == "done", job.error
        r = job.result
        assert (r["width"], r["height"], r["frames"]) == (128, 128, 9) and r["source_width"] == 64
        assert json.loads(open(r["settings"]).read())["prompt"] == "a red ball"
        with pytest.raises(UserError):
            ctx.submit("bob", "upscale", {"source_job": g})  # not bob's job
        with pytest.raises(UserError, match="multiple of 32"):
            ctx.submit("alice", "upscale", {"source_job": g, "tile_width": 48})  # refused at submit
    finally:
        ctx.jobs.shutdown(timeout=10)


def test_cli_upscale_plan_and_run(clip, tmp_path, capsys):
    from pipelines.cli import main

    assert main(["upscale", clip, "--plan", "--tile-width", "128", "--tile-height", "128"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["count"] == 6 and plan["width"] == 256 and "predicted peak" in plan["text"]
    assert main(["upscale", clip, "--out", str(tmp_path / "x2.mp4"), "--tile-width", "128", "--tile-height", "192"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["width"], got["height"], got["frames"]) == (256, 192, 17) and "3 tiles" in got["plan"]
    assert main(["upscale", clip]) == 2
