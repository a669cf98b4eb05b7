"""The engine's sampling behaviours that issue 17 asks for, on the tiny model (no oracle needed here; the
differential tests against Lightricks' code are in tests/oracle/): no state between runs, Full guidance, the
two-stage recipe of ICLoraPipeline, keyframes, reference groups, the temporal scale factor, the soundtrack."""
from __future__ import annotations

import contextlib
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipelines.errors import UserError  # noqa: E402
from pipelines.requests import ControlInput, GenerateRequest, KeyframeInput, LoraSpec  # noqa: E402
from tests.helpers import synthetic_video  # noqa: E402

W, H, F = 64, 64, 9


@pytest.fixture(scope="module")
def ctl(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctl")
    return {k: str(synthetic_video(d / f"{k}.mp4", frames=F, width=W, height=H, seed=s))
            for k, s in (("a", 1), ("b", 2), ("big", 3))}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    import cv2

    d = tmp_path_factory.mktemp("img")
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (255, 40, 0)
    img[20:40, 40:60] = (0, 200, 255)
    cv2.imwrite(str(d / "img.png"), img)
    return str(d / "img.png")


def req(**kw) -> GenerateRequest:
    base = dict(prompt="a red ball rolling", width=W, height=H, frames=F, fps=24.0, seed=3)
    base.update(kw)
    return GenerateRequest(**base)


def frames(engine, r):
    return engine.generate(r, write=False, previews=False).frames


# ------------------------------------------------------------------------------------------ no state between runs

def test_full_then_distilled_then_full_gives_the_same_video(tiny_engine, ctl):
    """Issue 17 acceptance: the same request gives the same video whatever ran before it. (The previous engine
    replaced pipe.scheduler for distilled runs and never put it back: a Full run after a distilled one sampled
    unshifted linear sigmas.)"""
    full = req(schedule="full", steps=3, controls=[ControlInput(ctl["a"])], audio=False)
    dist = req(controls=[ControlInput(ctl["a"])], audio=False)
    a = frames(tiny_engine, full)
    b = frames(tiny_engine, dist)
    c = frames(tiny_engine, full)
    two = frames(tiny_engine, req(stages=2, width=128, height=128, audio=False))
    d = frames(tiny_engine, dist)
    e = frames(tiny_engine, full)
    assert np.array_equal(a, c) and np.array_equal(a, e) and np.array_equal(b, d)
    assert not np.array_equal(a, b) and two.shape == (F, 128, 128, 3)


def test_full_schedule_is_the_official_one_whatever_the_size(tiny_engine, ctl, monkeypatch):
    """ltx-pipelines' Full runs use LTX2Scheduler().execute(steps=n): no dependence on the number of target or
    reference tokens (diffusers' pipelines shift by the sequence length)."""
    from pipelines.sampler import denoise, schedules

    seen = []
    real = denoise.euler_loop

    def spy(sigmas, *a, **k):
        seen.append(sigmas.cpu().clone())
        return real(sigmas, *a, **k)

    monkeypatch.setattr(denoise, "euler_loop", spy)
    frames(tiny_engine, req(schedule="full", steps=4, audio=False))
    frames(tiny_engine, req(schedule="full", steps=4, audio=False, width=128, controls=[ControlInput(ctl["a"])]))
    assert len(seen) == 2 and all(torch.equal(s, schedules.ltx2_sigmas(4)) for s in seen)


# ------------------------------------------------------------------------------------------ Full guidance

@contextlib.contextmanager
def transformer_calls(model):
    calls = []
    tr = model.pipe.transformer

    def pre(mod, args, kwargs):
        st = model.bias_state
        calls.append(dict(isolate=kwargs.get("isolate_modalities"), skip_v=set(st.skip_video_blocks),
                          skip_a=set(st.skip_audio_blocks), ctx=kwargs["encoder_hidden_states"].detach().clone()))

    h = tr.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield calls
    finally:
        h.remove()


def test_full_guidance_runs_the_official_passes(tiny_engine, ctl):
    """LTX_2_3_PARAMS: per step one conditional pass, one with the negative prompt (CFG), one with video and audio
    self-attention skipped in the STG block (block 28 of 48 -> block 1 of the tiny model's 2), one with the
    audio<->video cross-attention off (modality guidance)."""
    r = req(schedule="full", steps=2, negative_prompt="blue", controls=[ControlInput(ctl["a"])])
    with transformer_calls(tiny_engine.m) as calls:
        res = tiny_engine.generate(r, write=False, previews=False)
    assert len(calls) == 8 and res.metadata["model_passes"] == 8 and res.metadata["stg_blocks_used"] == [1]
    cond, unc, ptb, iso = calls[:4]
    assert cond["isolate"] is False and not cond["skip_v"] and not cond["skip_a"]
    assert not torch.equal(cond["ctx"], unc["ctx"])  # the negative prompt
    assert ptb["skip_v"] == {1} and ptb["skip_a"] == {1} and ptb["isolate"] is False
    assert iso["isolate"] is True and not iso["skip_v"]
    # without the soundtrack the isolated pass equals the conditional one: not run
    with transformer_calls(tiny_engine.m) as calls:
        tiny_engine.generate(req(schedule="full", steps=2, audio=False), write=False, previews=False)
    assert len(calls) == 6 and all(c["isolate"] for c in calls)


def test_each_guidance_term_changes_the_video_and_is_editable(tiny_engine):
    base = dict(schedule="full", steps=2, audio=False, guidance_scale=1.0, stg_scale=0.0, guidance_rescale=0.0,
                modality_scale=1.0)
    for before, after in ((dict(), dict(guidance_scale=3.0)), (dict(), dict(stg_scale=1.0)),
                          (dict(guidance_scale=3.0), dict(guidance_scale=3.0, guidance_rescale=0.7))):
        a = frames(tiny_engine, req(**{**base, **before}))
        assert not np.array_equal(a, frames(tiny_engine, req(**{**base, **after}))), after
    # distilled runs ignore guidance (one model pass per step, as ltx-pipelines' distilled pipelines)
    assert np.array_equal(frames(tiny_engine, req(audio=False)), frames(tiny_engine, req(audio=False, stg_scale=3.0)))


# ------------------------------------------------------------------------------------------ two stages

def _lora(engine, path, meta=None, scale=3.0):
    from pipelines.models.lora import save_lora

    g = torch.Generator().manual_seed(5)
    mods = dict(engine.m.pipe.transformer.named_modules())
    t = {}
    for name in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"):
        lin = mods[name]
        t[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) * scale
        t[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g) * scale
    return str(save_lora(path, t, meta or {}))


def test_two_stage_is_ic_lora_pipeline(tiny_engine, ctl, image, tmp_path, monkeypatch):
    """ltx-pipelines ICLoraPipeline: the LoRAs and references only in stage 1 (half size); stage 2 built with NO
    LoRAs (loras=[]), the image conditions encoded again at full size; stage2_keep_ic keeps both."""
    from peft.tuners.lora import LoraLayer

    lora = _lora(tiny_engine, tmp_path / "ic.safetensors")
    tr = tiny_engine.m.pipe.transformer
    state = {"events": []}
    sizes = []
    real_pixels = type(tiny_engine).image_pixels

    def pixels(self, path, w, h, crf):
        sizes.append((w, h))
        return real_pixels(self, path, w, h, crf)

    monkeypatch.setattr(type(tiny_engine), "image_pixels", pixels)

    def pre(mod, args, kwargs):
        layers = [m for m in tr.modules() if isinstance(m, LoraLayer)]
        active = bool(layers) and not layers[0].disable_adapters and bool(layers[0].active_adapters)
        state["events"].append((kwargs["hidden_states"].shape[1], active))

    h = tr.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        r = req(width=128, height=128, stages=2, image=image, controls=[ControlInput(ctl["a"])],
                loras=[LoraSpec(lora, 1.0)], audio=False)
        two = tiny_engine.generate(r, write=False, previews=False)
        ev1 = list(state["events"])
        state["events"].clear()
        keep = tiny_engine.generate(req(**{**r.__dict__, "stage2_keep_ic": True}), write=False, previews=False)
        ev2 = list(state["events"])
    finally:
        h.remove()
    # stage 1: 8 steps at 64x64 (2 frames x 2x2 target + as many reference tokens = 16) with the LoRA;
    # stage 2: 3 steps at 128x128 (2 x 4x4 = 32 target tokens, no reference) without it
    assert ev1 == [(16, True)] * 8 + [(32, False)] * 3
    assert ev2 == [(16, True)] * 8 + [(32 + 2 * 4 * 4, True)] * 3
    assert sizes == [(64, 64), (128, 128), (64, 64), (128, 128)]  # the image, at each stage's size
    assert two.frames.shape == keep.frames.shape == (F, 128, 128, 3)
    assert not np.array_equal(two.frames, keep.frames)


# ------------------------------------------------------------------------------------------ keyframes

def test_keyframe_at_any_frame(tiny_engine, image):
    """ltx-core VideoConditionByKeyframeIndex: an image at pixel frame 8 is appended as tokens placed at 8/fps s
    (no causal fix), with denoise mask 1 - strength; frame 0 replaces the first latent frame."""
    r = req(frames=17, keyframes=[KeyframeInput(image, 8, 0.75)], image=image, image_strength=0.9).validate()
    st = tiny_engine.stage_state(r, W, H, None, 1, 1)
    assert [g.kind for g in st.groups] == ["keyframe"] and st.latent.shape[1] == 3 * 4 + 4
    kf = st.positions[0, 0, 12:]
    assert torch.allclose(kf, torch.tensor([[8 / 24, 16 / 24]] * 4))
    assert torch.allclose(st.denoise_mask[0, 12:, 0], torch.full((4,), 0.25))
    assert torch.allclose(st.denoise_mask[0, :4, 0], torch.full((4,), 0.1, dtype=torch.float32))
    out = frames(tiny_engine, req(frames=17, keyframes=[KeyframeInput(image, 8, 1.0)], audio=False))
    plain = frames(tiny_engine, req(frames=17, audio=False))
    assert out.shape == (17, H, W, 3) and not np.array_equal(out, plain)
    for bad in (dict(keyframes=[KeyframeInput(image, 17)]), dict(keyframes=[KeyframeInput(image, 3, 1.5)]),
                dict(image=image, keyframes=[KeyframeInput(image, 0)])):
        with pytest.raises(UserError, match="keyframes"):
            req(frames=17, **bad).validate()


# ------------------------------------------------------------------------------------------ reference groups

def test_two_references_with_strength_get_separate_groups(tiny_engine, ctl, monkeypatch):
    """With two controls and strength < 1, ltx-core puts weight 0 between the two reference groups: the bias state
    carries two groups (compared with ltx-core's mask construction in tests/oracle/)."""
    st = tiny_engine.m.bias_state
    seen = []
    real = type(st).set

    def spy(self, n, w, groups=None):
        seen.append((n, None if w is None else w.clone(), None if groups is None else groups.clone()))
        return real(self, n, w, groups)

    monkeypatch.setattr(type(st), "set", spy)
    two = [ControlInput(ctl["a"]), ControlInput(ctl["b"])]
    frames(tiny_engine, req(controls=two, attention_strength=0.5, audio=False))
    n, w, groups = seen[-1]
    assert n == 8 and torch.allclose(w, torch.full((16,), 0.5)) and groups.tolist() == [1] * 8 + [2] * 8
    frames(tiny_engine, req(controls=two, audio=False))  # strength 1, no mask: no mask at all (ltx-core too)
    assert seen[-1][1] is None and seen[-1][2] is None


# ------------------------------------------------------------------------------------------ LoRA metadata

def test_temporal_scale_factor_runs(tiny_engine, tmp_path, ctl):
    """reference_temporal_scale_factor = 2: the control at half the frame rate (every 2nd frame), its tokens on
    their own time grid, ending with the target's (Lightricks' later ltx-core)."""
    lora = _lora(tiny_engine, tmp_path / "t2.safetensors", {"reference_temporal_scale_factor": "2"}, scale=0.1)
    clip = synthetic_video(tmp_path / "c17.mp4", frames=17, width=W, height=H, seed=4)
    r = req(frames=17, controls=[ControlInput(str(clip))], loras=[LoraSpec(lora)], audio=False).validate()
    refs = tiny_engine.prepare_references(r, 1, W, H, 2)
    assert refs.frames[0].shape[0] == 9 and refs.token_counts == [2 * 4]
    st = tiny_engine.stage_state(r, W, H, refs, 1, 2)
    assert torch.allclose(st.positions[0, 0, 12:, 1].max(), st.positions[0, 0, :12, 1].max())
    res = tiny_engine.generate(r, write=False, previews=False)
    assert res.metadata["reference_temporal_scale_factor"] == 2


def test_lora_without_factor_keys_is_an_ic_lora_at_d1(tiny_engine, tmp_path, ctl):
    """Official D=1 IC-LoRAs carry no reference_downscale_factor key: used with a control they act in context at
    D=1 (the reference at the target's size), as ICLoraPipeline does."""
    lora = _lora(tiny_engine, tmp_path / "plain.safetensors", {}, scale=0.3)
    r = req(controls=[ControlInput(ctl["a"])], loras=[LoraSpec(lora)], audio=False)
    res = tiny_engine.generate(r, write=False, previews=False)
    assert res.metadata["reference_downscale_factor"] == 1
    assert not np.array_equal(res.frames, frames(tiny_engine, req(controls=[ControlInput(ctl["a"])], audio=False)))


# ------------------------------------------------------------------------------------------ the soundtrack

def test_soundtrack_is_generated_and_written_as_aac(tiny_engine, ctl, tmp_path):
    import json

    from pipelines.video_io import ffmpeg_exe, probe, read_audio, read_comment

    res = tiny_engine.generate(req(controls=[ControlInput(ctl["a"])]), tmp_path / "av.mp4", previews=False)
    assert json.loads(read_comment(res.path))["request"]["seed"] == 3  # the settings survive the mux
    assert sorted(p.name for p in tmp_path.iterdir()) == ["av.json", "av.mp4"]  # no temporary file left
    assert res.audio is not None and res.audio.ndim == 2 and res.sample_rate == 16000 and res.metadata["audio"]
    info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(res.path)], capture_output=True).stderr.decode()
    assert "Audio: aac" in info and "Video: h264" in info
    assert probe(res.path).frames == F
    wav, rate = read_audio(res.path)
    assert rate == 16000 and wav.shape[0] == res.audio.shape[0] and wav.shape[1] >= res.audio.shape[1]
    silent = tiny_engine.generate(req(controls=[ControlInput(ctl["a"])], audio=False), tmp_path / "v.mp4",
                                  previews=False)
    info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(silent.path)], capture_output=True).stderr.decode()
    assert "Audio:" not in info and silent.audio is None
    assert not np.array_equal(res.frames, silent.frames)  # the audio stream takes part in the video's denoising


def test_with_audio_the_reference_also_reaches_the_target_through_audio(tiny_engine, ctl):
    """As ltx-pipelines runs IC-LoRA with audio: the modalities are not isolated, so even at attention strength 0
    (a hard mask in video self-attention) the reference reaches the target via video->audio->video
    cross-attention. Video-only runs isolate the modalities: strength 0 removes the reference entirely."""
    def influence(audio):
        a = frames(tiny_engine, req(controls=[ControlInput(ctl["a"])], attention_strength=0.0, audio=audio))
        b = frames(tiny_engine, req(controls=[ControlInput(ctl["b"])], attention_strength=0.0, audio=audio))
        return np.abs(a.astype(int) - b.astype(int)).max()

    assert influence(False) == 0
    assert influence(True) > 0


def test_cli_flags_for_audio_keyframes_and_guidance():
    import argparse

    from pipelines.cli.generate import build_request, register

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["generate", "--prompt", "x", "--out", "o.mp4", "--width", "64", "--height", "64",
                          "--frames", "17", "--keyframe", "end.png:16:0.8", "--keyframe", "mid.png:8", "--no-audio",
                          "--schedule", "full", "--stg", "0.5"])
    r = build_request(args)
    assert [(k.path, k.frame, k.strength) for k in r.keyframes] == [("end.png", 16, 0.8), ("mid.png", 8, 1.0)]
    assert r.audio is False and r.steps == 30 and r.guidance_scale == 3.0 and r.stg_scale == 0.5
    args = ap.parse_args(["generate", "--prompt", "x", "--out", "o.mp4", "--keyframe", "end.png"])
    with pytest.raises(UserError, match="IMG:FRAME"):
        build_request(args)


def test_a_lora_left_active_by_another_engine_does_not_act(tiny_engine, tmp_path):
    """No state survives between runs, across engines sharing a model too (a trainer's validation sampler is
    another Engine on the same model): a run without LoRAs disables every adapter on the transformer."""
    from pipelines.sampler.engine import Engine

    base = frames(tiny_engine, req(audio=False))
    other = Engine(tiny_engine.m)
    lora = _lora(tiny_engine, tmp_path / "l.safetensors", scale=1.0)
    with_lora = frames(other, req(audio=False, loras=[LoraSpec(lora)]))
    assert not np.array_equal(with_lora, base)
    assert np.array_equal(frames(Engine(tiny_engine.m), req(audio=False)), base)
