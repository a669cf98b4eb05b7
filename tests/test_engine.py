"""The IC-LoRA engine on the tiny model (issue 3 acceptance): reference attention strength / mask correctness,
reference tokens cut before decode, reproducibility, image + control, two-stage, and the generate CLI."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipelines.errors import UserError  # noqa: E402
from pipelines.requests import ControlInput, GenerateRequest  # noqa: E402
from tests.helpers import synthetic_video  # noqa: E402
from tests.test_attention import DenseMaskProcessor  # noqa: E402

W, H, F = 64, 64, 9  # D=1: 2x2 latent, 2 latent frames -> 8 target + 8 reference tokens


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    d = tmp_path_factory.mktemp("controls")
    return {
        "a": str(synthetic_video(d / "a.mp4", frames=F, width=W, height=H, seed=1)),
        "b": str(synthetic_video(d / "b.mp4", frames=F, width=W, height=H, seed=2)),
    }


@contextlib.contextmanager
def decoded(model):
    """Capture the VAE decoder's float input (latents after the reference was cut) and output (the video)."""
    seen = {}

    def hook(mod, args, out):
        seen["latents"] = args[0].detach().clone()
        seen["video"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    h = model.pipe.vae.decoder.register_forward_hook(hook)
    try:
        yield seen
    finally:
        h.remove()


@contextlib.contextmanager
def attn1_processor(model, proc):
    blocks = model.pipe.transformer.transformer_blocks
    old = [b.attn1.processor for b in blocks]
    for b in blocks:
        b.attn1.set_processor(proc)
    try:
        yield
    finally:
        for b, p in zip(blocks, old):
            b.attn1.set_processor(p)


def req_for(control: str | None, strength: float = 1.0, **kw) -> GenerateRequest:
    """Video-only by default: these tests are about the reference's path through video self-attention, and with the
    soundtrack on (the default, as in every official pipeline) the reference also reaches the target through the
    audio stream (video->audio->video cross-attention), as Lightricks' pipelines run it (see test_audio_*)."""
    base = dict(prompt="a red ball rolling", width=W, height=H, frames=F, fps=24.0, seed=7,
                controls=[ControlInput(control)] if control else [], attention_strength=strength, audio=False)
    base.update(kw)
    return GenerateRequest(**base)


def run(engine, req, proc=None):
    with contextlib.ExitStack() as stack:
        if proc is not None:
            stack.enter_context(attn1_processor(engine.m, proc))
        seen = stack.enter_context(decoded(engine.m))
        res = engine.generate(req, write=False, previews=False)
    return seen["video"], res, seen


def test_strength_one_equals_unmasked_path_exactly(tiny_engine, controls):
    from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor

    ours, _, _ = run(tiny_engine, req_for(controls["a"], 1.0))
    assert tiny_engine.m.bias_state.calls == 0
    stock, _, _ = run(tiny_engine, req_for(controls["a"], 1.0), LTX2PerturbedAttnProcessor())
    assert torch.equal(ours, stock)


def test_strength_zero_equals_hard_masked_reference(tiny_engine, controls):
    ours, _, _ = run(tiny_engine, req_for(controls["a"], 0.0))
    assert tiny_engine.m.bias_state.calls == 8 * 2  # biased attn1 in both layers, one model pass per step
    assert tiny_engine.m.bias_state.log_w is None  # cleared after the run
    dense, _, _ = run(tiny_engine, req_for(controls["a"], 0.0), DenseMaskProcessor(8, torch.zeros(8)))
    assert (ours - dense).abs().max().item() < 1e-5


@pytest.mark.parametrize("strength", [0.5, 0.1])
def test_fractional_strength_matches_dense_log_bias(tiny_engine, controls, strength):
    ours, _, _ = run(tiny_engine, req_for(controls["a"], strength))
    dense, _, _ = run(tiny_engine, req_for(controls["a"], strength), DenseMaskProcessor(8, torch.full((8,), strength)))
    assert (ours - dense).abs().max().item() < 1e-5
    # and it is not the diffusers 0.42.1 behaviour (fractional strength == hard mask)
    hard, _, _ = run(tiny_engine, req_for(controls["a"], 0.0))
    assert (ours - hard).abs().max().item() > 1e-3


def test_reference_influence_shrinks_with_strength(tiny_engine, controls):
    influence = []
    for s in (1.0, 0.5, 0.1, 0.0):
        a, _, _ = run(tiny_engine, req_for(controls["a"], s))
        b, _, _ = run(tiny_engine, req_for(controls["b"], s))
        influence.append((a - b).abs().mean().item())
    assert influence[0] > influence[1] > influence[2] > influence[3], influence
    assert influence[0] > 1e-3


def test_output_never_contains_the_control(tiny_engine, tmp_path):
    """A white / black checkerboard control at D=1: the decoded tensor has exactly the target's latent grid and
    frame count; the output is not the control."""
    from pipelines.video_io import write_video

    board = np.zeros((F, H, W, 3), np.uint8)
    board[:, ::16] = 255
    board[:, :, ::16] = 255
    ctrl = write_video(tmp_path / "board.mp4", board, 24.0)
    video, res, seen = run(tiny_engine, req_for(str(ctrl), 1.0, width=96))
    assert seen["latents"].shape[2:] == (2, H // 32, 96 // 32)  # target latent grid only, no reference tokens
    assert res.frames.shape == (F, H, 96, 3)
    assert video.shape[2:] == (F, H, 96)
    diff = np.abs(res.frames[:, :, :W].astype(int) - board.astype(int)).mean()
    assert diff > 40


def test_same_seed_same_frames_and_different_seed_differs(tiny_engine, controls):
    r1 = tiny_engine.generate(req_for(controls["a"], 0.5), write=False, previews=False)
    r2 = tiny_engine.generate(req_for(controls["a"], 0.5), write=False, previews=False)
    r3 = tiny_engine.generate(req_for(controls["a"], 0.5, seed=8), write=False, previews=False)
    assert np.array_equal(r1.frames, r2.frames)
    assert not np.array_equal(r1.frames, r3.frames)


def test_control_cache_follows_the_file(tiny_engine, controls, tmp_path):
    """Conformed controls are cached between runs, but a control replaced at the same path is read again."""
    import shutil

    path = tmp_path / "ctl.mp4"
    shutil.copyfile(controls["a"], path)
    ra = tiny_engine.generate(req_for(str(path), 0.5), write=False, previews=False)
    assert np.array_equal(ra.frames, tiny_engine.generate(req_for(controls["a"], 0.5), write=False,
                                                          previews=False).frames)
    shutil.copyfile(controls["b"], path)  # same name, other content
    rb = tiny_engine.generate(req_for(str(path), 0.5), write=False, previews=False)
    fresh = tiny_engine.generate(req_for(controls["b"], 0.5), write=False, previews=False)
    assert np.array_equal(rb.frames, fresh.frames) and not np.array_equal(ra.frames, rb.frames)
    assert len(tiny_engine._controls) <= tiny_engine.CONTROL_CACHE


def test_prompt_embeddings_are_cached_by_text(tiny_engine, controls):
    """The text encoder runs once per distinct prompt; cached embeddings give bit-identical output."""
    calls = []
    h = tiny_engine.m.pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny_engine._prompts.clear()
        r1 = tiny_engine.generate(req_for(controls["a"], 0.5), write=False, previews=False)
        n1 = len(calls)
        r2 = tiny_engine.generate(req_for(controls["a"], 0.5, seed=8), write=False, previews=False)
        assert len(calls) == n1 >= 1  # new seed, same prompt: no encoder run
        r3 = tiny_engine.generate(req_for(controls["a"], 0.5), write=False, previews=False)
        assert np.array_equal(r1.frames, r3.frames) and not np.array_equal(r1.frames, r2.frames)
        tiny_engine.generate(req_for(controls["a"], 0.5, prompt="a blue cube"), write=False, previews=False)
        assert len(calls) > n1
        full = dict(schedule="full", steps=2, guidance_scale=3.0)
        a = tiny_engine.generate(req_for(controls["a"], 0.5, negative_prompt="red", **full), write=False,
                                 previews=False)
        b = tiny_engine.generate(req_for(controls["a"], 0.5, negative_prompt="blue", **full), write=False,
                                 previews=False)
        assert not np.array_equal(a.frames, b.frames)  # with CFG the negative is part of the key (words the
        # tiny tokenizer knows: unknown words all map to one token)
    finally:
        h.remove()
    assert len(tiny_engine._prompts) <= tiny_engine.PROMPT_CACHE


def test_mask_left_half_zero_gives_zero_weights_left(tiny_engine, tmp_path):
    ctrl = synthetic_video(tmp_path / "c.mp4", frames=F, width=128, height=64, seed=3)
    mask = np.ones((64, 128), np.float32)
    mask[:, :64] = 0.0
    np.save(tmp_path / "m.npy", mask)
    req = req_for(str(ctrl), 0.8, width=128, mask=str(tmp_path / "m.npy"))
    refs = tiny_engine.prepare_references(req.validate(), 1, 128, 64)
    w = refs.weights.reshape(2, 2, 4)
    assert torch.all(w[..., :2] == 0) and torch.allclose(w[..., 2:], torch.tensor(0.8))
    # end to end: the masked run equals the dense reference with those weights
    ours, _, _ = run(tiny_engine, req)
    dense, _, _ = run(tiny_engine, req, DenseMaskProcessor(16, refs.weights))
    assert (ours - dense).abs().max().item() < 1e-5


def test_image_and_control_together(tiny_engine, controls, tmp_path):
    import cv2

    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "first.png"), img)
    res = tiny_engine.generate(req_for(controls["a"], 0.5, image=str(tmp_path / "first.png")), write=False,
                               previews=False)
    plain = tiny_engine.generate(req_for(controls["a"], 0.5), write=False, previews=False)
    assert res.frames.shape == (F, H, W, 3)
    assert not np.array_equal(res.frames, plain.frames)


def test_progress_previews_and_cancel(tiny_engine, controls):
    from pipelines.errors import Cancelled

    events = []
    tiny_engine.generate(req_for(controls["a"], audio=True), write=False, on_step=events.append, previews=True)
    steps = [e for e in events if e.phase == "denoise"]
    assert [e.step for e in steps] == list(range(1, 9)) and steps[-1].total == 8
    assert steps[0].preview is not None and steps[0].preview.dtype == np.uint8
    # every phase is named, with a fraction that moves forward (no minute at "step 8/8")
    assert [e.phase for e in events if e.phase != "denoise"] == ["encode prompt", "encode conditions", "decode",
                                                                 "audio decode"]
    fr = [e.fraction for e in events]
    assert fr == sorted(fr) and 0 <= fr[0] < 0.1 and 0.8 < fr[-1] < 1 and steps[3].message == "step 4/8 denoising"
    with pytest.raises(Cancelled):
        tiny_engine.generate(req_for(controls["a"]), write=False, previews=False, should_cancel=lambda: True)
    assert tiny_engine.m.bias_state.log_w is None


def test_two_stage_returns_target_size(tiny_engine, tmp_path):
    ctrl = synthetic_video(tmp_path / "c.mp4", frames=F, width=64, height=64, seed=4)
    res = tiny_engine.generate(req_for(str(ctrl), 0.5, width=128, height=128, stages=2), write=False,
                               previews=False)
    assert res.frames.shape == (F, 128, 128, 3)
    keep = tiny_engine.generate(req_for(str(ctrl), 0.5, width=128, height=128, stages=2, stage2_keep_ic=True),
                                write=False, previews=False)
    assert keep.frames.shape == (F, 128, 128, 3)


def test_size_not_multiple_of_32d_refused(tiny_engine, controls):
    with pytest.raises(UserError, match="multiple of"):
        tiny_engine.prepare_references(req_for(controls["a"]).validate(), 2, 96, 64)


# ------------------------------------------------------------------------------------------------ the CLI

@pytest.fixture
def cli_uses_session_model(monkeypatch, tiny_model):
    """EngineService normally builds its own tiny model; reuse the session one (saves ~10 s)."""
    import pipelines.models.loader as loader

    class _Cache:
        def get(self, spec, tier=None):
            assert spec.is_tiny
            return tiny_model

    monkeypatch.setattr(loader, "default_cache", lambda: _Cache())


def test_cli_generate_writes_mp4_and_sidecar(cli_uses_session_model, controls, tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.video_io import probe

    out = tmp_path / "out" / "gen.mp4"
    code = main(["generate", "--prompt", "a red ball", "--control", controls["a"], "--attention-strength", "0.5",
                 "--width", "96", "--height", "64", "--frames", "9", "--fps", "12", "--seed", "3", "--model", "tiny",
                 "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["video"] == str(out)
    info = probe(out)
    assert (info.width, info.height, info.frames) == (96, 64, 9) and abs(info.fps - 12) < 1e-6
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["request"]["attention_strength"] == 0.5 and side["request"]["seed"] == 3
    assert side["tiny_model"] is True
    # the sidecar reproduces the request
    assert GenerateRequest.from_json_file(out.with_suffix(".json")).controls[0].path == controls["a"]


def test_cli_generate_bad_frames_exit_2(cli_uses_session_model, tmp_path, capsys):
    from pipelines.cli import main

    code = main(["generate", "--prompt", "x", "--frames", "117", "--width", "64", "--height", "64", "--model", "tiny",
                 "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "117" in err and "113" in err
    assert not (tmp_path / "x.mp4").exists()


def test_cli_models_lists_tiny(capsys):
    from pipelines.cli import main

    assert main(["models"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]  # beside "files": the official files and their purpose
    assert any(r["name"] == "tiny" and r["ready"] for r in rows)


def test_fp8_storage_tier_runs_with_the_reference_bias(controls):
    """The fp8 tier's layerwise casting (fp8 storage, upcast per layer) composes with our attn1 processor and
    the audio-isolation hook: on CPU the same hooks run, the bias is applied, the output stays close to fp32."""
    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec
    from pipelines.sampler.engine import Engine

    m = ModelCache().get(tiny_spec())  # a fresh model: casting changes it for good
    eng = Engine(m)
    req = req_for(controls["a"], 0.5)
    ref = eng.generate(req, write=False, previews=False).frames
    m.pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert m.pipe.transformer.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    out = eng.generate(req, write=False, previews=False).frames
    diff = np.abs(out.astype(int) - ref.astype(int)).mean()
    assert 0 < diff < 8, diff  # quantised weights: a little different, not broken
    full = eng.generate(req_for(controls["a"], 1.0), write=False, previews=False).frames
    assert not np.array_equal(full, out)  # the strength-0.5 bias still acts under fp8 storage


def test_diffusers_folder_loads_offline_and_generates(tiny_model, tmp_path):
    """The real-weights path for a diffusers-format LTX-2.3 folder: registry -> loader (bf16, offline) ->
    engine. The tiny model saved with save_pretrained stands in for the real folder."""
    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import get_spec
    from pipelines.sampler.engine import Engine

    from diffusers import LTX2InContextPipeline

    from pipelines.models.tiny import build_tiny_components

    # a fresh build of the same weights (seed 0): the session model may carry LoRA adapters from other tests
    LTX2InContextPipeline(**build_tiny_components(seed=0)).save_pretrained(tmp_path / "ltx-2.3-mini-distilled")
    spec = get_spec("ltx-2.3-mini-distilled", tmp_path)
    assert spec.ready and spec.default_schedule == "distilled"
    loaded = ModelCache().get(spec)
    assert loaded.dtype == torch.bfloat16 and loaded.pipe.transformer.dtype == torch.bfloat16
    req = req_for(None, 1.0, model="ltx-2.3-mini-distilled")
    out = Engine(loaded).generate(req, write=False, previews=False)
    ref = Engine(tiny_model).generate(req_for(None, 1.0), write=False, previews=False)
    assert out.frames.shape == ref.frames.shape == (F, H, W, 3)
    assert np.abs(out.frames.astype(int) - ref.frames.astype(int)).mean() < 8  # same weights, bf16 rounding
    assert out.metadata["request"]["model"] == "ltx-2.3-mini-distilled"
