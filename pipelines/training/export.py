"""Export a trained PEFT adapter as an official / ComfyUI IC-LoRA file, with a sanity check beside it.

Keys: ``diffusion_model.<module>.lora_A.weight`` / ``lora_B.weight``. The video-branch module names we train
(transformer_blocks.N.attn1.to_q, ..., ff.net.2) are the same in diffusers and in the official checkpoint.
The official loader merges W += B @ A and ignores alpha, so alpha/rank is folded into B here; the metadata
still records rank and alpha (and says the scale is folded) for tools that want them.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from pipelines.models.lora import PREFIX, save_lora

ADAPTER = "iclora_train"
_PEFT_PARAM = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def adapter_tensors(transformer, adapter: str = ADAPTER) -> dict[str, tuple]:
    """{module name: (A [r,in], B [out,r])} of one PEFT adapter, fp32 CPU copies."""
    pairs: dict[str, dict] = {}
    for name, p in transformer.named_parameters():
        m = _PEFT_PARAM.match(name)
        if m and m["adapter"] == adapter:
            mod = m["mod"].replace(".base_layer", "")
            pairs.setdefault(mod, {})[m["ab"]] = p.detach().float().cpu().clone()
    return {mod: (ab["A"], ab["B"]) for mod, ab in sorted(pairs.items()) if "A" in ab and "B" in ab}


def official_tensors(pairs: dict[str, tuple], rank: int, alpha: float) -> dict:
    scale = float(alpha) / float(rank)
    out = {}
    for mod, (a, b) in pairs.items():
        out[f"{PREFIX}{mod}.lora_A.weight"] = a.contiguous()
        out[f"{PREFIX}{mod}.lora_B.weight"] = (b * scale).contiguous()
    return out


def sanity_check(tensors: dict) -> dict:
    """NaN/Inf, share of lora_B that is non-zero (an untrained or dead B is all zeros), update norm ||B A||_F
    per module (alpha already folded)."""
    import torch

    bad, nonzero, total, norms = [], 0, 0, {}
    mods = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in tensors})
    for mod in mods:
        a = tensors[f"{PREFIX}{mod}.lora_A.weight"].float()
        b = tensors[f"{PREFIX}{mod}.lora_B.weight"].float()
        for key, t in (("lora_A", a), ("lora_B", b)):
            if not bool(torch.isfinite(t).all()):
                bad.append(f"{PREFIX}{mod}.{key}.weight")
        nonzero += int((b != 0).sum())
        total += b.numel()
        norms[mod] = float(torch.linalg.matrix_norm(b @ a)) if not bad else float("nan")
    finite_norms = [v for v in norms.values() if math.isfinite(v)]
    return {
        "finite": not bad, "bad_keys": bad, "modules": len(mods),
        "nonzero_lora_B_share": nonzero / total if total else 0.0,
        "update_norm_mean": sum(finite_norms) / len(finite_norms) if finite_norms else 0.0,
        "update_norm_max": max(finite_norms) if finite_norms else 0.0,
        "update_norms": norms,
        "ok": not bad and nonzero > 0,
    }


def sanity_text(s: dict) -> str:
    state = "OK" if s["ok"] else ("NaN/Inf in " + ", ".join(s["bad_keys"][:3]) if s["bad_keys"] else "all lora_B are zero (untrained)")
    return (f"sanity: {state}; {s['modules']} modules; non-zero lora_B {s['nonzero_lora_B_share']:.1%}; "
            f"update norm mean {s['update_norm_mean']:.4g}, max {s['update_norm_max']:.4g}")


def export_lora(transformer, path: str | os.PathLike, recipe, *, steps: int, base_model: str,
                trigger: str | None = None, adapter: str = ADAPTER, write_sanity: bool = True) -> tuple[Path, dict]:
    """Write the adapter as an official IC-LoRA (atomic) and its sanity check as <file>.sanity.json."""
    pairs = adapter_tensors(transformer, adapter)
    if not pairs:
        raise RuntimeError(f"no PEFT adapter {adapter!r} in the transformer")
    rank = next(iter(pairs.values()))[0].shape[0]
    tensors = official_tensors(pairs, rank, recipe.alpha)
    meta = {
        "reference_downscale_factor": str(recipe.reference_downscale_factor),
        "rank": str(rank), "alpha": str(recipe.alpha), "alpha_folded_into_B": "true",
        "steps": str(steps), "base_model": base_model, "trigger_word": trigger or "",
        "recipe": json.dumps(recipe.to_dict(), sort_keys=True), "format": "ltx-2.3 ic-lora (official / ComfyUI keys)",
        "trainer": "iclora-studio",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora(path, tensors, meta)
    sanity = sanity_check(tensors)
    if write_sanity:
        side = path.with_suffix(".sanity.json")
        tmp = side.with_name(f".{side.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(sanity, indent=2))
        os.replace(tmp, side)
    return path, sanity


__all__ = ["export_lora", "adapter_tensors", "official_tensors", "sanity_check", "sanity_text", "ADAPTER"]
