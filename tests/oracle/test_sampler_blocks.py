"""Differential tests of the sampler's building blocks against Lightricks' ltx-core / ltx-pipelines 1.0.0.

Each test names the official function it compares with. These need no model: schedules, guidance, attention masks
between token groups, conditioning items (positions, denoise masks, tokens). Exact agreement is expected here
(same float32 operations), except where a tolerance is stated.
"""
from __future__ import annotations

import math

import pytest
import torch


def _ltx_constants():
    from ltx_pipelines.utils import constants  # importable: tests/oracle/conftest.py set up ltx (ltx_env.py)

    return constants


# ---------------------------------------------------------------- schedules: ltx_core LTX2Scheduler.execute

@pytest.mark.parametrize("steps", [1, 2, 8, 30, 40])
def test_full_schedule_equals_ltx2scheduler(steps):
    """ltx-pipelines' Full runs call LTX2Scheduler().execute(steps=n) (no latent: the 4096-token anchor)."""
    from ltx_core.components.schedulers import LTX2Scheduler

    from pipelines.sampler.schedules import ltx2_sigmas, stage1_sigmas

    ref = LTX2Scheduler().execute(steps=steps)
    assert torch.equal(ltx2_sigmas(steps), ref)
    assert torch.equal(stage1_sigmas("full", steps), ref)


@pytest.mark.parametrize("shape", [(1, 128, 2, 4, 4), (1, 128, 16, 16, 24)])
def test_token_dependent_shift_equals_ltx2scheduler(shape):
    """LTX2Scheduler.execute(latent=...) shifts by the latent's token count (the HQ pipeline uses it)."""
    from ltx_core.components.schedulers import LTX2Scheduler

    from pipelines.sampler.schedules import ltx2_sigmas

    latent = torch.zeros(shape)
    tokens = shape[2] * shape[3] * shape[4]
    assert torch.equal(ltx2_sigmas(12, tokens=tokens), LTX2Scheduler().execute(latent=latent, steps=12))


def test_distilled_schedules_equal_ltx_pipelines_constants():
    """ltx_pipelines.utils.constants DISTILLED_SIGMA_VALUES / STAGE_2_DISTILLED_SIGMA_VALUES (as the pipelines
    build them: torch.Tensor(values))."""
    from pipelines.sampler.schedules import stage1_sigmas, stage2_sigmas

    c = _ltx_constants()
    assert torch.equal(stage1_sigmas("distilled", 8), torch.Tensor(c.DISTILLED_SIGMA_VALUES))
    assert torch.equal(stage2_sigmas(), torch.Tensor(c.STAGE_2_DISTILLED_SIGMA_VALUES))


# ---------------------------------------------------------------- guidance: ltx_core MultiModalGuider.calculate

def test_default_guidance_equals_ltx_2_3_params():
    """ltx_pipelines.utils.constants.LTX_2_3_PARAMS: 30 steps, video/audio guider params."""
    from pipelines.requests import GenerateRequest
    from pipelines.sampler.guidance import AUDIO_DEFAULTS, VIDEO_DEFAULTS

    c = _ltx_constants()
    p = c.LTX_2_3_PARAMS
    for ours, theirs in ((VIDEO_DEFAULTS, p.video_guider_params), (AUDIO_DEFAULTS, p.audio_guider_params)):
        assert (ours.cfg, ours.stg, list(ours.stg_blocks), ours.rescale, ours.modality, ours.skip_step) == (
            theirs.cfg_scale, theirs.stg_scale, theirs.stg_blocks, theirs.rescale_scale, theirs.modality_scale,
            theirs.skip_step)
    req = GenerateRequest(prompt="x")
    assert req.steps == p.num_inference_steps and req.negative_prompt == c.DEFAULT_NEGATIVE_PROMPT
    assert req.video_guidance() == VIDEO_DEFAULTS and req.audio_guidance() == AUDIO_DEFAULTS


@pytest.mark.parametrize("params", [
    dict(cfg=3.0, stg=1.0, rescale=0.7, modality=3.0),
    dict(cfg=7.0, stg=1.0, rescale=0.7, modality=3.0),
    dict(cfg=4.0, stg=0.0, rescale=0.0, modality=1.0),
    dict(cfg=1.0, stg=0.5, rescale=0.3, modality=1.0),
    dict(cfg=1.0, stg=0.0, rescale=0.0, modality=2.0),
])
def test_guided_prediction_equals_multimodal_guider(params):
    from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams

    from pipelines.sampler.guidance import GuidanceParams, guide

    g = torch.Generator().manual_seed(0)
    cond, unc, ptb, iso = (torch.randn(1, 40, 16, generator=g) for _ in range(4))
    ours = GuidanceParams(**params)
    theirs = MultiModalGuider(MultiModalGuiderParams(cfg_scale=params["cfg"], stg_scale=params["stg"],
                                                     rescale_scale=params["rescale"],
                                                     modality_scale=params["modality"], stg_blocks=[0]))
    # the passes a guider does not ask for are given to it as 0.0, as ltx-pipelines' denoising function does
    args = [unc if ours.needs_uncond else 0.0, ptb if ours.needs_perturbed else 0.0,
            iso if ours.needs_isolated else 0.0]
    assert (ours.needs_uncond, ours.needs_perturbed, ours.needs_isolated) == (
        theirs.do_unconditional_generation(), theirs.do_perturbed_generation(),
        theirs.do_isolated_modality_generation())
    assert torch.equal(guide(cond, *args, p=ours), theirs.calculate(cond, *args))
    for step in range(6):
        assert GuidanceParams(skip_step=2).skips(step) == MultiModalGuider(
            MultiModalGuiderParams(skip_step=2)).should_skip_step(step)


def test_stg_blocks_map_to_the_same_relative_depth():
    from pipelines.sampler.guidance import map_blocks

    assert map_blocks((28,), 48) == (28,)
    assert map_blocks((28,), 2) == (1,)
    assert map_blocks((28,), 4) == (2,)
    assert map_blocks((0, 47), 8) == (0, 7)
    with pytest.raises(ValueError):
        map_blocks((48,), 8)


# ---------------------------------------------------------------- conditioning items and the token-group mask

C, FPS = 16, 24.0


def _ltx_state(dtype, items, shape=(1, C, 3, 2, 3)):
    """ltx-core: VideoLatentTools.create_initial_state + the items' apply_to, in order."""
    from ltx_core.components.patchifiers import VideoLatentPatchifier
    from ltx_core.tools import VideoLatentTools
    from ltx_core.types import VideoLatentShape

    tools = VideoLatentTools(VideoLatentPatchifier(patch_size=1), VideoLatentShape(*shape), FPS)
    st = tools.create_initial_state("cpu", dtype)
    for it in items:
        st = it.apply_to(st, tools)
    return st


def _latents(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(image=torch.randn(1, C, 1, 2, 3, generator=g), key=torch.randn(1, C, 1, 2, 3, generator=g),
                ref1=torch.randn(1, C, 2, 1, 2, generator=g), ref2=torch.randn(1, C, 3, 2, 3, generator=g),
                key2=torch.randn(1, C, 1, 2, 3, generator=g))


def _both(dtype, lat, mask1, attn2, with_keys=True):
    """The same conditioning built by ltx-core's items and by ours: first-frame image (strength 0.8), keyframe at
    pixel frame 9 (0.7) and another at 16 (1.0), a D=2 reference (0.9) with per-token attention weights `mask1`,
    and a D=1 reference (1.0) with scalar attention `attn2`."""
    from ltx_core.conditioning import (ConditioningItemAttentionStrengthWrapper, VideoConditionByKeyframeIndex,
                                       VideoConditionByLatentIndex, VideoConditionByReferenceLatent)

    from pipelines.sampler import state as S

    lat = {k: v.to(dtype) for k, v in lat.items()}
    items = [VideoConditionByLatentIndex(lat["image"], 0.8, 0)]
    if with_keys:
        items += [VideoConditionByKeyframeIndex(lat["key"], 9, 0.7), VideoConditionByKeyframeIndex(lat["key2"], 16, 1.0)]
    r1 = VideoConditionByReferenceLatent(lat["ref1"], downscale_factor=2, strength=0.9)
    r2 = VideoConditionByReferenceLatent(lat["ref2"], downscale_factor=1, strength=1.0)
    items += [ConditioningItemAttentionStrengthWrapper(r1, mask1) if mask1 is not None else r1,
              ConditioningItemAttentionStrengthWrapper(r2, attn2) if attn2 is not None else r2]
    theirs = _ltx_state(dtype, items)

    ours = S.video_state((1, C, 3, 2, 3), FPS, dtype, "cpu")
    ours = S.replace_latent_frames(ours, lat["image"], 0.8, 0, grid=(2, 3))
    if with_keys:
        ours = S.append_keyframe(ours, lat["key"], 9, 0.7, FPS)
        ours = S.append_keyframe(ours, lat["key2"], 16, 1.0, FPS)
    ours = S.append_reference(ours, lat["ref1"], FPS, downscale=2, strength=0.9, attention=mask1)
    ours = S.append_reference(ours, lat["ref2"], FPS, downscale=1, strength=1.0, attention=attn2)
    return ours, theirs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conditioning_items_equal_ltx_core(dtype):
    """ltx_core.conditioning VideoConditionByLatentIndex / VideoConditionByKeyframeIndex /
    VideoConditionByReferenceLatent on VideoLatentTools.create_initial_state: tokens, clean values, denoise masks
    and RoPE positions agree exactly."""
    ours, theirs = _both(dtype, _latents(), torch.linspace(0, 1, 4), 0.5)
    assert torch.equal(ours.latent, theirs.latent)
    assert torch.equal(ours.clean, theirs.clean_latent)
    assert torch.equal(ours.denoise_mask, theirs.denoise_mask)
    assert ours.positions.dtype == theirs.positions.dtype
    assert torch.equal(ours.positions, theirs.positions)


def _dense_bias_from_ltx(mask: torch.Tensor) -> torch.Tensor:
    """ltx-core TransformerArgsPreprocessor._prepare_self_attention_mask: [0, 1] -> log(w), 0 -> -inf."""
    m = mask[0].double()
    return torch.where(m > 0, torch.log(m.clamp(min=1e-300)), torch.full_like(m, -math.inf))


@pytest.mark.parametrize("case", ["mask+scalar", "scalar-only", "one-masked", "none", "no-keyframes"])
def test_group_attention_equals_ltx_core_mask(case):
    """ltx_core.conditioning.mask_utils.build_attention_mask (through ConditioningItemAttentionStrengthWrapper):
    the attention our linear-memory processor computes from state.attention() equals dense attention with the
    official [T, T] mask as a log bias. Tolerance 1e-5 (fp32 SDPA vs float64 dense reference)."""
    from pipelines.sampler.attention import ReferenceBiasState, biased_sdpa

    mask1, attn2, keys = {"mask+scalar": (torch.tensor([0.0, 0.3, 1.0, 0.6]), 0.5, True),
                          "scalar-only": (None, 0.25, True), "one-masked": (torch.full((4,), 0.7), None, True),
                          "none": (None, None, True), "no-keyframes": (torch.tensor([1.0, 0.5, 0.0, 1.0]), 0.0, False)}[case]
    ours, theirs = _both(torch.float32, _latents(1), mask1, attn2, with_keys=keys)
    w, groups = ours.attention()
    if theirs.attention_mask is None:
        assert w is None and groups is None
        return
    t = ours.latent.shape[1]
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, t, 16, generator=g) for _ in range(3))
    st = ReferenceBiasState()
    st.set(ours.num_target, w, groups)
    assert st.log_w is not None
    out = biased_sdpa(q, k, v, ours.num_target, st.log_w, st.groups)
    logits = q.double() @ k.double().transpose(-1, -2) / 4 + _dense_bias_from_ltx(theirs.attention_mask)
    ref = torch.softmax(logits, -1) @ v.double()
    assert (out.double() - ref).abs().max().item() < 1e-5
    # the group structure matters here: without it, reference<->reference / keyframe<->reference stay at 1
    if len(ours.groups) > 1:
        flat = biased_sdpa(q, k, v, ours.num_target, st.log_w, None)
        assert (flat.double() - ref).abs().max().item() > 1e-3


def test_noise_equals_gaussian_noiser():
    """ltx_core.components.noisers.GaussianNoiser: same generator, same draws, same blend by the denoise mask."""
    from ltx_core.components.noisers import GaussianNoiser

    from pipelines.sampler import state as S

    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs = _both(dtype, _latents(2), torch.full((4,), 0.5), 0.5)
        for scale in (1.0, torch.tensor(0.909375)):
            a = S.add_noise(ours, torch.Generator().manual_seed(3), scale)
            b = GaussianNoiser(torch.Generator().manual_seed(3))(theirs, scale)
            assert torch.equal(a.latent, b.latent)


def test_euler_step_and_denoised_equal_ltx_core():
    """ltx_core.components.diffusion_steps.EulerDiffusionStep.step and ltx_core.utils.to_denoised."""
    from ltx_core.components.diffusion_steps import EulerDiffusionStep
    from ltx_core.utils import to_denoised

    from pipelines.sampler import state as S

    g = torch.Generator().manual_seed(0)
    sigmas = torch.tensor([1.0, 0.725, 0.421875, 0.0])
    for dtype in (torch.float32, torch.bfloat16):
        x, d, v = (torch.randn(1, 30, 16, generator=g).to(dtype) for _ in range(3))
        ts = torch.rand(1, 30, 1, generator=g)
        assert torch.equal(S.to_denoised(x, v, ts), to_denoised(x, v, ts))
        for i in range(3):
            assert torch.equal(S.euler_step(x, d, sigmas, i), EulerDiffusionStep().step(x, d, sigmas, i))


def test_reference_temporal_scale_places_the_reference_on_its_own_time_grid():
    """A reference at half the frame rate (S=2): 9 frames for a 17-frame target. Its latent frames span pixel
    frames [0,1) and [1,9) at 12 fps; moved so its last patch ends with the target's (17/24 s). ltx-core 1.0.0 has
    no temporal scale (Lightricks' later reference_video_cond.py has); S=1 equals 1.0.0 exactly (tested above)."""
    from pipelines.sampler import state as S

    st = S.video_state((1, C, 3, 1, 1), FPS, torch.float32, "cpu")
    st = S.append_reference(st, torch.zeros(1, C, 2, 1, 1), FPS, temporal_scale=2)
    ref_t = st.positions[0, 0, st.num_target:]
    assert torch.allclose(ref_t, torch.tensor([[0.0, 1 / 24], [1 / 24, 17 / 24]]))
    assert torch.isclose(ref_t[-1, 1], st.positions[0, 0, st.num_target - 1, 1])  # ends with the target
