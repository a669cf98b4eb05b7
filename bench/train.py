"""Training speed of one IC-LoRA step.

CPU (default): the tiny model, LoRA rank 8, synthetic cached latents (target 512x512x25 -> 16x16x4 tokens, a
1-frame reference at D=1 -> 16x16 tokens); seconds per step with and without the reference tokens (ratio).
--gpu: the LTX-2.3 transformer shapes (48 layers, 32 heads x 128, gated attention, cross-attention modulation,
perturbed attention, split RoPE; audio branch 32 x 64) with random bf16 weights, LoRA rank 32 on the video
branch, target 768x512x49 (+ a D=1 still reference), bf16 autocast; s/step and peak memory with and without
gradient checkpointing. --layers N builds N layers and extrapolates time linearly to 48 (said in the output);
memory is reported as measured and extrapolated (weights + activations scale with layers).

    python bench/train.py [--steps 8]
    python bench/train.py --gpu [--layers 8] [--steps 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FULL_LAYERS = 48


def _fake_items(tmp: Path, c: int, f: int, h: int, w: int, l_tokens: int, dv: int, da: int, n: int = 2):
    import torch
    from safetensors.torch import save_file

    from pipelines.training.cache import CacheItem

    items = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        path = tmp / f"item{i}.safetensors"
        save_file({"latents": torch.randn(c, f, h, w, generator=g), "ref_latents": torch.randn(c, 1, h, w, generator=g),
                   "prompt_embeds": torch.randn(l_tokens, dv, generator=g),
                   "audio_prompt_embeds": torch.randn(l_tokens, da, generator=g),
                   "prompt_mask": torch.ones(l_tokens)}, str(path))
        items.append(CacheItem(name=f"item{i}", path=str(path), caption="", width=w * 32, height=h * 32,
                               frames=(f - 1) * 8 + 1, fps=24.0, reference={}))
    return items


def cpu(args) -> None:
    import json

    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec
    from pipelines.training.recipe import Recipe
    from pipelines.training.trainer import Trainer

    m = ModelCache().get(tiny_spec())
    tr = m.pipe.transformer
    recipe = Recipe(rank=8, alpha=8.0, warmup_steps=0, checkpoint_every=0, sample_every=0,
                    gradient_checkpointing=False).validate()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lh, lw = args.cpu_size // 32, args.cpu_size // 32
        items = _fake_items(tmp, tr.config.in_channels, 4, lh, lw, m.max_sequence_length, tr.config.cross_attention_dim,
                            tr.config.audio_cross_attention_dim)
        times = {False: [], True: []}
        for rep in range(args.repeats):  # interleaved, so a busy machine hurts both the same
            for with_ref in (False, True):
                run = tmp / f"run{rep}_{int(with_ref)}"
                Trainer(m, items, recipe, run, with_reference=with_ref).train(args.steps)
                times[with_ref] += [json.loads(x)["s_per_step"] for x in (run / "loss.jsonl").read_text().splitlines()][2:]
        res = {k: statistics.median(v) for k, v in times.items()}
    nt, nr = 4 * lh * lw, lh * lw
    print(f"tiny model, target {args.cpu_size}x{args.cpu_size}x25 ({nt} tokens) + 1-frame reference ({nr} tokens), "
          f"rank 8, median of {args.repeats} x {args.steps - 2} steps")
    print(f"  without reference tokens: {res[False] * 1000:.1f} ms/step")
    print(f"  with reference tokens:    {res[True] * 1000:.1f} ms/step")
    print(f"  ratio with/without: {res[True] / res[False]:.2f}x (token ratio {(nt + nr) / nt:.2f}x)")


def ltx23_config(layers: int) -> dict:
    """LTX-2.3 transformer shapes (diffusers LTX2VideoTransformer3DModel arguments)."""
    return dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                attention_head_dim=128, cross_attention_dim=4096, caption_channels=4096, audio_in_channels=128,
                audio_out_channels=128, audio_num_attention_heads=32, audio_attention_head_dim=64,
                audio_cross_attention_dim=2048, num_layers=layers, gated_attn=True, cross_attn_mod=True,
                audio_gated_attn=True, audio_cross_attn_mod=True, perturbed_attn=True, rope_type="split",
                use_prompt_adaln_single=True, use_prompt_embeddings=False)


def gpu(args) -> None:
    import torch
    from diffusers import LTX2VideoTransformer3DModel

    from pipelines.training.recipe import Recipe
    from pipelines.training.trainer import _step_generator, flow_matching_loss, inject_lora

    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    with torch.device(dev):
        torch.manual_seed(0)
        tr = LTX2VideoTransformer3DModel(**ltx23_config(args.layers)).to(torch.bfloat16)
    tr.train()
    n_params = sum(p.numel() for p in tr.parameters())
    recipe = Recipe(rank=32, alpha=32.0).validate()
    params = inject_lora(tr, 32, 32.0, 0)
    lora_params = sum(p.numel() for _, p in params)
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-4)
    f, h, w = (49 - 1) // 8 + 1, 512 // 32, 768 // 32  # 7 x 16 x 24 = 2688 target tokens
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(128, f, h, w, generator=g)
    ref = torch.randn(128, 1, h, w, generator=g)
    pe, ape, mask = torch.randn(256, 4096, generator=g), torch.randn(256, 2048, generator=g), torch.ones(256)
    print(f"LTX-2.3 shapes, {args.layers} of {FULL_LAYERS} layers built ({n_params / 1e9:.2f} B params, bf16), "
          f"LoRA rank 32: {lora_params / 1e6:.1f} M params; target 768x512x49 = {f * h * w} tokens + "
          f"reference {h * w} tokens (D=1 still)")
    out = {}
    for ckpt in (False, True):
        if ckpt:
            tr.enable_gradient_checkpointing()
        else:
            tr.disable_gradient_checkpointing()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        times = []
        try:
            for step in range(args.steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                loss, _ = flow_matching_loss(tr, tr, lat, ref, pe, ape, mask, 24.0, recipe, _step_generator(0, step),
                                             dev, amp=True)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() / 2**30
            sps = statistics.median(times[1:] if len(times) > 1 else times)
            out[ckpt] = (sps, peak)
        except torch.OutOfMemoryError:
            out[ckpt] = (float("nan"), float("inf"))
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    scale = FULL_LAYERS / args.layers
    weights_gb = n_params * 2 / 2**30
    for ckpt, (sps, peak) in out.items():
        name = "with gradient checkpointing   " if ckpt else "without gradient checkpointing"
        est_peak = peak * scale if peak != float("inf") else peak
        print(f"  {name}: {sps:.3f} s/step measured, peak {peak:.1f} GiB measured; "
              f"x{scale:.1f} layers -> ~{sps * scale:.2f} s/step, ~{est_peak:.0f} GiB (linear extrapolation)")
    if out[True][0] == out[True][0] and out[False][0] == out[False][0]:
        print(f"  ratio checkpointing/plain time: {out[True][0] / out[False][0]:.2f}x; "
              f"memory: {out[True][1] / out[False][1]:.2f}x")
    print(f"  published anchor: full fine-tune IC mode 832x480x49 on H100 4.1 s/step; weights alone "
          f"{weights_gb:.1f} GiB for {args.layers} layers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cpu-size", type=int, default=512, help="CPU: square target size in px (multiple of 32)")
    ap.add_argument("--repeats", type=int, default=3, help="CPU: interleaved repeats of each configuration")
    ap.add_argument("--layers", type=int, default=8, help="--gpu: layers to build (time extrapolated to 48)")
    args = ap.parse_args()
    gpu(args) if args.gpu else cpu(args)


if __name__ == "__main__":
    main()
