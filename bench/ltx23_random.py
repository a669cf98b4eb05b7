"""Random-weight LTX-2.3 stacks for the GPU suite (bench/gpu_suite.py): the real shapes, no real weights.

Weights are born on Lightricks' side, as in a real install, by the oracle tests' builder (tests/oracle/official.py):
ltx-core's own configurators build every component of the checkpoint (transformer, video VAE, audio VAE, vocoder,
text connectors + projection) from the checkpoint-metadata config dict, with seeded random weights on the target
device, and `official_state_dict` lays them out exactly as the official single file names them. The studio then
loads that dict through its own single-file path (pipelines.models.loader.official_pipeline: the config mapping
and converters build_official_pipeline uses, minus reading the file) into modules built on the meta device, with
assign=True: both sides hold the SAME tensors (one copy of the ~46 GB on the GPU), and a wrong key or shape fails
loudly. At full size the dict stays in memory: writing and re-reading 46 GB would take minutes of the GPU window.

Two scales, one code path:
  "full": FULL_LTX23_CONFIG (the released 22B checkpoints' config: 48 layers, width 4096, the 2.3 video VAE, ...),
          the x2 spatial upsampler, and a text encoder that is Gemma-3-12B-shaped ("gemma12b") or a light stand-in
          with the same output layout ("light": hidden 3840, 48 layers -> 49 hidden states, one tiny head, so the
          connectors see real shapes at ~0.1 B params).
  "tiny": TINY_LTX23_CONFIG (every structural flag of 2.3 at toy widths) and the studio's tiny Gemma, so
          `gpu_suite.py --tiny` runs every step on a CPU.
The modules are created directly in the compute dtype (bf16 on a GPU): no fp32 copy of 19 B parameters, so an
80 GB H100 builds it too.

ltx_core / ltx_pipelines are imported behind stand-ins for torchaudio / PyAV where those do not load
(`import_ltx`); nothing in pipelines/ or studio/ imports this module.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from dataclasses import dataclass

GB = 1024**3


class StandInUsed(RuntimeError):
    pass


class _Unavailable(types.ModuleType):
    """A module that can be imported but not used: every attribute is another stand-in, every call raises."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self._reason = reason

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self.__name__}.{item}", self._reason)

    def __call__(self, *args, **kwargs):
        raise StandInUsed(f"{self.__name__} was used, but it is a stand-in here ({self._reason}); "
                          "see bench/ltx23_random.import_ltx")


def import_ltx():
    """Import ltx_core and ltx_pipelines where torchaudio or PyAV does not load: both are imported at module
    level by code the suite never calls (ltx-core's audio-input encoding, ltx-pipelines' media file I/O; SPEC.md
    10/11). Only while ltx-* are imported does a stand-in that raises on any use take their place; transformers
    is imported first, so it keeps seeing them as missing. With the real packages nothing is replaced."""
    if "ltx_pipelines" in sys.modules:
        return sys.modules["ltx_core"]
    reasons = {}
    for name in ("torchaudio", "av"):
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a C library that does not load
            reasons[name] = f"import {name} failed: {type(exc).__name__}: {exc}".splitlines()[0][:160]
            for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[k]
    import transformers  # noqa: F401

    standins = {name: _Unavailable(name, why) for name, why in reasons.items()}
    sys.modules.update(standins)
    try:
        import ltx_core  # noqa: F401
        import ltx_core.model.audio_vae  # noqa: F401
        import ltx_pipelines  # noqa: F401
    finally:
        for name, mod in standins.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    return sys.modules["ltx_core"]


# ------------------------------------------------------------------------------------------------ scales

GEMMA_12B_TEXT = dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=256, sliding_window=1024,
                      query_pre_attn_scalar=256, max_position_embeddings=131072)
GEMMA_12B_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        image_size=896, patch_size=14)
MAX_SEQUENCE_LENGTH = 1024  # what the loader uses for official checkpoints


@dataclass
class Scale:
    name: str  # "full" | "tiny"
    config: dict  # the checkpoint-metadata config (ltx-core's input)
    upsampler_config: dict

    @property
    def t(self) -> dict:
        return self.config["transformer"]

    @property
    def dim(self) -> int:
        return self.t["num_attention_heads"] * self.t["attention_head_dim"]

    @property
    def audio_dim(self) -> int:
        return self.t["audio_num_attention_heads"] * self.t["audio_attention_head_dim"]

    @property
    def latent(self) -> int:
        return self.t["in_channels"]

    @property
    def max_sequence_length(self) -> int:
        return MAX_SEQUENCE_LENGTH


def scale_of(name: str) -> Scale:
    import_oracle()
    from tests.oracle.official import FULL_LTX23_CONFIG, TINY_LTX23_CONFIG, TINY_UPSAMPLER_CONFIG

    if name == "tiny":
        return Scale("tiny", TINY_LTX23_CONFIG, TINY_UPSAMPLER_CONFIG)
    # the x2 spatial upsampler of LTX-2.3 (ltx-2.3-spatial-upscaler-x2): 1024 wide, 4 blocks a stage, no rational
    # resampler (diffusers' convert_ltx2_to_diffusers, 2.3)
    return Scale("full", FULL_LTX23_CONFIG, dict(TINY_UPSAMPLER_CONFIG, mid_channels=1024, num_blocks_per_stage=4))


def import_oracle():
    """tests.oracle.official (the repository root must be importable), after import_ltx's stand-ins."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    import_ltx()
    import tests.oracle.official  # noqa: F401

    return sys.modules["tests.oracle.official"]


@contextlib.contextmanager
def default_dtype(dtype):
    """Modules created inside are created in `dtype` (Lightricks' builder would otherwise create fp32 then cast)."""
    import torch

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


# ------------------------------------------------------------------------------------------------ builds


def build_text_encoder(s: Scale, kind: str, device: str, dtype, vocab_size: int, seed: int = 0):
    """Gemma 3 for the pipeline: the studio's tiny one (tiny scale), "light" (Gemma-3-12B's hidden size and layer
    count, tiny elsewhere: the same hidden-state layout for the connectors) or "gemma12b" (Gemma-3-12B's shapes)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    if s.name == "tiny":
        from pipelines.models.tiny import build_text_encoder as tiny_te

        torch.manual_seed(seed)
        return tiny_te(vocab_size).to(device, dtype)
    if kind == "gemma12b":
        text, vision, mm = dict(GEMMA_12B_TEXT), dict(GEMMA_12B_VISION), 256
    else:
        text = dict(vocab_size=max(vocab_size, 256), hidden_size=3840, intermediate_size=64, num_hidden_layers=48,
                    num_attention_heads=1, num_key_value_heads=1, head_dim=64, sliding_window=1024,
                    max_position_embeddings=4096)
        vision, mm = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=28, patch_size=14), 4
    text.update(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=mm)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


@dataclass
class Official:
    """Lightricks' side: ltx-core's modules holding the weights, and the official checkpoint dict (same tensors)."""

    config: dict
    components: dict  # ltx-core modules by name: transformer, video_encoder, video_decoder, audio_*, vocoder, ...

    @property
    def transformer(self):
        return self.components["transformer"]

    @property
    def encoder(self):
        return self.components["video_encoder"]

    @property
    def decoder(self):
        return self.components["video_decoder"]


@dataclass
class Stack:
    scale: Scale
    pipe: object  # diffusers LTX2InContextPipeline
    upsampler: object
    official: Official | None
    device: str
    dtype: object

    def param_counts(self) -> dict:
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        p = self.pipe
        return {"transformer": count(p.transformer), "connectors": count(p.connectors), "vae": count(p.vae),
                "text_encoder": count(p.text_encoder), "audio_vae": count(p.audio_vae), "vocoder": count(p.vocoder),
                "upsampler": count(self.upsampler)}

    def drop_official(self) -> None:
        """Forget Lightricks' modules (the studio's keep the shared tensors alive on their own)."""
        self.official = None


def build_stack(scale: str, device: str, dtype, text_encoder: str = "light", seed: int = 0) -> Stack:
    """The studio's LTX2InContextPipeline and x2 upsampler on random LTX-2.3-shaped weights that Lightricks' modules
    hold too (see the module docstring)."""
    from pipelines.models.loader import official_pipeline, official_upsampler
    from pipelines.models.tiny import build_tokenizer

    oracle = import_oracle()
    s = scale_of(scale)
    with default_dtype(dtype):
        comps = oracle.build_ltx_components(s.config, seed=seed, device=device, dtype=dtype)
        up = _ltx_upsampler(oracle, s.upsampler_config, seed, device).to(dtype)
    ckpt = oracle.official_state_dict(comps)

    def load_text():
        tok = build_tokenizer()
        tok.model_max_length = MAX_SEQUENCE_LENGTH
        return build_text_encoder(s, text_encoder, device, dtype, len(tok), seed + 10), tok

    pipe = official_pipeline(s.config, ckpt, load_text, dtype, source=f"random {scale} LTX-2.3 checkpoint")
    pipe.set_progress_bar_config(disable=True)
    upsampler = official_upsampler(s.upsampler_config, up.state_dict(), source=f"random {scale} upsampler")
    return Stack(s, pipe, upsampler, Official(s.config, comps), device, dtype)


def _ltx_upsampler(oracle, config: dict, seed: int, device: str):
    if device != "meta":
        return oracle.build_ltx_upsampler(config, seed=seed, device=device)
    import torch
    from ltx_core.model.upsampler import LatentUpsamplerConfigurator

    with torch.device("meta"):  # shapes only (the tests' full-size check); the oracle's init needs real memory
        return LatentUpsamplerConfigurator.from_config(config)


def loaded_model(stack: Stack, tier, name: str = "ltx-2.3-random"):
    """The studio's LoadedModel for a built stack, placed for `tier` by the loader's own apply_tier (what
    ModelCache.get does after loading; the engine and the trainer install their attention processor themselves)."""
    from pipelines.models.loader import LoadedModel, apply_tier
    from pipelines.models.registry import ModelKind, ModelSpec

    spec = ModelSpec(f"{name}-{stack.scale.name}", ModelKind.SINGLE_FILE, None, "distilled")
    tier = apply_tier(stack.pipe, tier, stack.device, stack.dtype)
    if stack.upsampler is not None:
        stack.upsampler.to(stack.device, stack.dtype)
    return LoadedModel(spec=spec, pipe=stack.pipe, device=stack.device, dtype=stack.dtype, tier=tier,
                       max_sequence_length=stack.scale.max_sequence_length, upsampler=stack.upsampler)


# ------------------------------------------------------------------------------------------------ FLOPs


def _attn(nq: int, nk: int, dq: int, dkv: int, inner: int, heads: int, gated: bool, core: bool = True) -> float:
    proj = 2 * nq * dq * inner * 2 + 2 * nk * dkv * inner * 2  # q + out on the queries, k + v on the keys
    core = 4 * nq * nk * inner if core else 0  # QK^T and AV
    gate = 2 * nq * dq * heads if gated else 0
    return proj + core + gate


def transformer_flops(cfg: dict, n_video: int, n_audio: int, n_text: int, n_text_audio: int, av_cross: bool,
                      attention_core: bool = True) -> float:
    """FLOPs of one forward of the LTX-2 joint transformer (multiply-add = 2) counted from its shapes: every
    attention's projections and QK^T/AV, the feed-forwards (4x, GELU), the per-token timestep modulation, the
    in/out projections. Left out: elementwise work (norms, RoPE, gating products, softmax) and the per-sample
    modulations (prompt and audio/video cross-attention AdaLN: a few GFLOP a forward, whatever the tokens)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    da = cfg["audio_num_attention_heads"] * cfg["audio_attention_head_dim"]
    h, ha = cfg["num_attention_heads"], cfg["audio_num_attention_heads"]
    dc, dac = cfg["cross_attention_dim"], cfg["audio_cross_attention_dim"]
    g = bool(cfg.get("gated_attn")) or bool(cfg.get("apply_gated_attention"))
    n, na = n_video, n_audio
    c = attention_core
    blk = (_attn(n, n, d, d, d, h, g, c) + _attn(n, n_text, d, dc, d, h, g, c) + 16 * n * d * d
           + _attn(na, na, da, da, da, ha, g, c) + _attn(na, n_text_audio, da, dac, da, ha, g, c) + 16 * na * da * da)
    if av_cross:
        blk += _attn(n, na, d, da, da, ha, g, c) + _attn(na, n, da, d, da, ha, g, c)
    mods = 9 if (cfg.get("cross_attn_mod") or cfg.get("cross_attention_adaln")) else 6
    per_token_t = 2 * n * (256 * d + d * d + d * mods * d) + 2 * na * (256 * da + da * da + da * mods * da)
    io = 2 * n * cfg["in_channels"] * d * 2 + 2 * na * cfg["audio_in_channels"] * da * 2
    return cfg["num_layers"] * blk + per_token_t + io


class FlopCounter:
    """Counts transformer FLOPs per forward from the token counts a forward-pre-hook sees (studio: diffusers
    kwargs; Lightricks: ltx-core Modality objects)."""

    def __init__(self, cfg: dict):
        self.cfg, self.flops, self.calls, self.last = cfg, 0.0, 0, {}

    def add(self, n_video: int, n_audio: int, n_text: int, n_text_audio: int, av_cross: bool) -> None:
        self.last = dict(video=n_video, audio=n_audio, text=n_text, text_audio=n_text_audio, av_cross=av_cross)
        self.flops += transformer_flops(self.cfg, n_video, n_audio, n_text, n_text_audio, av_cross)
        self.calls += 1

    def studio_hook(self, module, args, kwargs):
        hs, ahs = kwargs["hidden_states"], kwargs.get("audio_hidden_states")
        self.add(hs.shape[1], 0 if ahs is None else ahs.shape[1], kwargs["encoder_hidden_states"].shape[1],
                 kwargs["audio_encoder_hidden_states"].shape[1], not kwargs.get("isolate_modalities", False))

    def ltx_hook(self, module, args, kwargs):
        video, audio = kwargs.get("video"), kwargs.get("audio")
        if video is None and args:
            video, audio = args[0], args[1] if len(args) > 1 else None
        self.add(video.latent.shape[1], 0 if audio is None else audio.latent.shape[1], video.context.shape[1],
                 0 if audio is None else audio.context.shape[1], audio is not None)
