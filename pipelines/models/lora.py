"""LoRA files: read, normalise, validate, inspect (SPEC.md 4).

Every file is normalised to the official / ltx-trainer layout that ComfyUI and Lightricks' loader use:
``diffusion_model.<module>.lora_A.weight`` / ``lora_B.weight``, alpha folded into B (the official loader merges
W += scale * B @ A and ignores alpha). Kohya-style files (``lora_down`` / ``lora_up`` / ``.alpha``, dotted or
``lora_unet_`` underscored names) are converted. Validation happens before a file touches a model: every key
maps to a Linear module of the loaded transformer, shapes match, every value is finite; failures name the key.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import UserError

PREFIX = "diffusion_model."
#: LoRA weights for the text connectors' input projection (diffusers loads them into `connectors`). Lightricks'
#: ltx-pipelines 1.0.0 fuses LoRAs into the transformer only, so these are read, checked, and not applied.
TEXT_PROJ_PREFIX = "text_embedding_projection."
_PEFT_RE = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])\.(?:default\.)?weight$")
_KOHYA_RE = re.compile(r"^(?P<mod>.+)\.lora_(?P<ud>down|up)\.weight$")
_ALPHA_RE = re.compile(r"^(?P<mod>.+)\.alpha$")


@dataclass
class LoraFile:
    """A LoRA file normalised in memory. `tensors` holds `diffusion_model.<module>.lora_A|B.weight` (alpha folded)."""

    path: str
    source_format: str  # "official" | "kohya" | "diffusers"
    tensors: dict = field(repr=False)
    metadata: dict
    rank: int
    alpha: float | None  # alpha as stored in the file (None when the file has none; then scale is 1)
    modules: list[str]
    reference_downscale_factor: int
    reference_temporal_scale_factor: int
    bad_keys: list[str]  # keys with NaN/Inf

    @property
    def finite(self) -> bool:
        return not self.bad_keys

    @property
    def is_ic_lora(self) -> bool:
        """Whether the file DECLARES reference scale factors. Informative only: as in Lightricks' ICLoraPipeline, any
        LoRA used with reference (control) videos acts in context, and a file without the keys has D = 1 (the
        official trainer writes `reference_downscale_factor` only when it is not 1)."""
        return "reference_downscale_factor" in self.metadata or "reference_temporal_scale_factor" in self.metadata

    @property
    def text_projection_modules(self) -> list[str]:
        return [m for m in self.modules if m.startswith(TEXT_PROJ_PREFIX)]

    def transformer_tensors(self) -> dict:
        """The weights that are applied: the transformer's (ltx-pipelines fuses nothing else)."""
        return {k: v for k, v in self.tensors.items() if k.startswith(PREFIX)}

    def summary(self) -> dict:
        targets = sorted({m.split(".")[-1] if not m.endswith(("0.proj", "net.2")) else ".".join(m.split(".")[-3:])
                          for m in self.modules})
        return {
            "path": self.path, "format": self.source_format, "rank": self.rank, "alpha": self.alpha,
            "modules": len(self.modules), "target_modules": targets,
            "reference_downscale_factor": self.reference_downscale_factor,
            "reference_temporal_scale_factor": self.reference_temporal_scale_factor,
            "ic_lora": self.is_ic_lora, "finite": self.finite, "bad_keys": self.bad_keys[:10],
            "metadata": {k: v for k, v in self.metadata.items() if len(str(v)) < 500},
        }


def _factor(meta: dict, key: str, path: str) -> int:
    raw = meta.get(key)
    if raw is None:
        return 1
    try:
        val = float(raw)
    except ValueError:
        raise UserError(f"{Path(path).name}: metadata {key}={raw!r} is not a number") from None
    if val < 1 or val != int(val):
        raise UserError(f"{Path(path).name}: metadata {key}={raw!r} must be a whole number >= 1")
    return int(val)


def _strip(name: str) -> str:
    if name.startswith(TEXT_PROJ_PREFIX):
        return name  # keeps its own prefix: it targets the text connectors, not the transformer
    for p in (PREFIX, "transformer.", "base_model.model."):
        if name.startswith(p):
            return name[len(p):]
    return name


def read_lora(path: str | os.PathLike, module_names: set[str] | None = None) -> LoraFile:
    """Read and normalise a LoRA .safetensors. `module_names` (dotted names of the target model, official
    naming) resolves kohya's underscored names; without it they are resolved by a few known patterns."""
    import torch
    from safetensors import safe_open

    path = str(path)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"LoRA file not found: {path}")
    if p.stat().st_size == 0:
        raise UserError(f"LoRA file is empty: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a bad header
        raise UserError(f"{p.name} is not a readable .safetensors LoRA file ({exc.__class__.__name__}: {exc})") from None
    if not raw:
        raise UserError(f"{p.name} holds no tensors")

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    fmt = None
    for key, t in raw.items():
        m = _PEFT_RE.match(key)
        if m:
            fmt = fmt or ("official" if key.startswith(PREFIX) else "diffusers")
            pairs.setdefault(_strip(m["mod"]), {})[m["ab"]] = t
            continue
        m = _KOHYA_RE.match(key)
        if m:
            fmt = "kohya"
            pairs.setdefault(m["mod"], {})["A" if m["ud"] == "down" else "B"] = t
            continue
        m = _ALPHA_RE.match(key)
        if m:
            alphas[m["mod"]] = float(t.float().item())
            continue
        raise UserError(f"{p.name}: key {key!r} is not a LoRA weight (expected lora_A/lora_B or lora_down/lora_up)")

    if fmt == "kohya":
        pairs = {_kohya_module(mod, module_names): ab for mod, ab in pairs.items()}
        alphas = {_kohya_module(mod, module_names): a for mod, a in alphas.items()}

    tensors: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    ranks = set()
    for mod, ab in sorted(pairs.items()):
        if "A" not in ab or "B" not in ab:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise UserError(f"{p.name}: module {mod} has no {missing} weight")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise UserError(f"{p.name}: {mod} has mismatched shapes A{tuple(a.shape)} B{tuple(b.shape)}")
        rank = a.shape[0]
        ranks.add(rank)
        if mod in alphas:
            b = b * (alphas[mod] / rank)
        for kind, t in (("A", a), ("B", b)):
            key = f"{mod}.lora_{kind}.weight" if mod.startswith(TEXT_PROJ_PREFIX) else f"{PREFIX}{mod}.lora_{kind}.weight"
            if not bool(torch.isfinite(t).all()):
                bad.append(key)
            tensors[key] = t.contiguous()
    alpha_vals = set(alphas.values())
    alpha = alpha_vals.pop() if len(alpha_vals) == 1 else (None if not alpha_vals else float("nan"))
    if alpha is None and "alpha" in meta:
        try:
            alpha = float(meta["alpha"])
        except ValueError:
            alpha = None
    return LoraFile(
        path=path, source_format=fmt or "official", tensors=tensors, metadata=meta,
        rank=max(ranks) if ranks else 0, alpha=alpha, modules=sorted(pairs),
        reference_downscale_factor=_factor(meta, "reference_downscale_factor", path),
        reference_temporal_scale_factor=_factor(meta, "reference_temporal_scale_factor", path),
        bad_keys=bad,
    )


_KNOWN_TAILS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
                "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "audio_attn1.to_q", "audio_attn1.to_k",
                "audio_attn1.to_v", "audio_attn1.to_out.0", "audio_attn2.to_q", "audio_attn2.to_k", "audio_attn2.to_v",
                "audio_attn2.to_out.0", "audio_ff.net.0.proj", "audio_ff.net.2"]


def _kohya_module(name: str, module_names: set[str] | None) -> str:
    name = _strip(name)
    if name.startswith("lora_unet_"):
        flat = name[len("lora_unet_"):]
        if module_names:
            lookup = {m.replace(".", "_"): m for m in module_names}
            if flat in lookup:
                return lookup[flat]
        m = re.match(r"^transformer_blocks_(\d+)_(.+)$", flat)
        if m:
            for tail in _KNOWN_TAILS:
                if tail.replace(".", "_") == m[2]:
                    return f"transformer_blocks.{m[1]}.{tail}"
        raise UserError(f"cannot map kohya LoRA key lora_unet_{flat} to a model module")
    return name


def to_diffusers_module(official: str) -> str:
    """Official (ComfyUI) module name -> diffusers module name, using diffusers' own converter. Transformer modules
    come back relative to the transformer; text-projection modules as `connectors.<module>`."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_ltx2_lora_to_diffusers

    if official.startswith(TEXT_PROJ_PREFIX):
        out = _convert_non_diffusers_ltx2_lora_to_diffusers({f"{official}.lora_A.weight": None},
                                                            TEXT_PROJ_PREFIX.rstrip("."))
        return next(iter(out)).removesuffix(".lora_A.weight")
    out = _convert_non_diffusers_ltx2_lora_to_diffusers({f"{PREFIX}{official}.lora_A.weight": None})
    return next(iter(out)).removeprefix("transformer.").removesuffix(".lora_A.weight")


def validate_lora(lora: LoraFile, transformer, connectors=None) -> None:
    """Refuse a file that would silently do the wrong thing: NaN/Inf, unknown modules, wrong shapes. Text-projection
    modules are checked against `connectors` when it is given."""
    import torch

    name = Path(lora.path).name
    _require_finite(lora)
    modules = dict(transformer.named_modules())
    if connectors is not None:
        modules.update({f"connectors.{n}": m for n, m in connectors.named_modules()})
    for mod in lora.modules:
        text_proj = mod.startswith(TEXT_PROJ_PREFIX)
        if text_proj and connectors is None:
            continue
        target = modules.get(to_diffusers_module(mod))
        target = getattr(target, "base_layer", target)  # a module PEFT already wrapped (another LoRA is loaded)
        key = f"{mod}.lora_A.weight" if text_proj else f"{PREFIX}{mod}.lora_A.weight"
        if target is None or not isinstance(target, torch.nn.Linear):
            raise UserError(f"{name}: {key} targets {mod}, which is not a Linear layer of the loaded model "
                            "(a LoRA for a different model?)")
        a = lora.tensors[key]
        b = lora.tensors[key.replace(".lora_A.", ".lora_B.")]
        if a.shape[1] != target.in_features or b.shape[0] != target.out_features:
            raise UserError(f"{name}: {key} has shape A{tuple(a.shape)} B{tuple(b.shape)} but {mod} is "
                            f"{target.in_features}->{target.out_features} (a LoRA for a different model size?)")


def _require_finite(lora: LoraFile) -> None:
    if lora.bad_keys:
        raise UserError(f"{Path(lora.path).name} contains NaN/Inf values in {lora.bad_keys[0]}"
                        + (f" (and {len(lora.bad_keys) - 1} more keys)" if len(lora.bad_keys) > 1 else "")
                        + "; this file would produce black video. Re-export it from an earlier checkpoint.")


_PRECHECKED: dict[tuple, LoraFile] = {}


def precheck_loras(paths: list[str]) -> None:
    """The checks that need no loaded model, for a request about to be queued: each file reads as a LoRA, has
    no NaN/Inf, and the IC-LoRAs share one reference scale factor. So a bad file is refused when the user
    submits, not after the job waited its turn behind other renders. Files are read once per version (path,
    mtime, size); only their summary is kept."""
    files = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            raise UserError(f"LoRA file {p} does not exist") from None
        key = (os.path.realpath(p), st.st_mtime_ns, st.st_size)
        lf = _PRECHECKED.get(key)
        if lf is None:
            lf = dataclasses.replace(read_lora(p), tensors={})
            if len(_PRECHECKED) > 64:
                _PRECHECKED.clear()
            _PRECHECKED[key] = lf
        _require_finite(lf)
        files.append(lf)
    check_compatible(files)


def check_compatible(loras: list[LoraFile]) -> tuple[int, int]:
    """(D, temporal factor S) for the references of a LoRA stack, read the way Lightricks' ICLoraPipeline reads them:
    a file without the key has factor 1; the stack takes the factor that is not 1, and two different factors that
    are not 1 cannot be combined."""
    out = []
    for attr, label in (("reference_downscale_factor", "reference_downscale_factor"),
                        ("reference_temporal_scale_factor", "reference_temporal_scale_factor")):
        scaled = [lf for lf in loras if getattr(lf, attr) != 1]
        values = {getattr(lf, attr) for lf in scaled}
        if len(values) > 1:
            desc = ", ".join(f"{Path(lf.path).name} ({label}={getattr(lf, attr)})" for lf in scaled)
            raise UserError(f"these IC-LoRAs use different {label} values and cannot be combined: {desc}")
        out.append(values.pop() if values else 1)
    return out[0], out[1]


def save_lora(path: str | os.PathLike, tensors: dict, metadata: dict) -> Path:
    """Atomic write of an official-format LoRA (keys must already be diffusion_model.*.lora_A/B.weight)."""
    from safetensors.torch import save_file

    path = Path(path)
    for k in tensors:
        if not k.startswith((PREFIX, TEXT_PROJ_PREFIX)) or not _PEFT_RE.match(k):
            raise ValueError(f"not an official LoRA key: {k}")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def inspect_lora(path) -> dict:
    return read_lora(path).summary()


__all__ = ["TEXT_PROJ_PREFIX", "LoraFile", "read_lora", "validate_lora", "precheck_loras", "check_compatible", "save_lora", "inspect_lora",
           "to_diffusers_module"]
