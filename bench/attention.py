"""Attention benchmark: the studio's reference log-bias processor against no bias and against diffusers'
stock dense-mask path, on one LTX-2 attention layer (attn1) with random weights.

(a) no bias: diffusers' LTX2PerturbedAttnProcessor, no mask (the fast path we take at strength 1)
(b) ours:    ReferenceBiasAttnProcessor at strength 0.5 (log bias folded into extra head channels)
(c) stock:   diffusers' processor given the dense [B,T,T] additive mask (1-w)*-10000 the pipeline builds

CPU mode measures each (variant, size) in its own subprocess; memory is the peak of live tensor bytes during one
call (a TorchDispatchMode tracker, deterministic; the dense mask counted for (c)); prints time and peak-memory
ratios b/a and c/a (goal at the largest size: b/a memory <= 1.1, time <= 1.3).
GPU mode (--gpu): full-size LTX-2.3 attention (32 heads x 128, hidden 4096, bf16), 768x512x121 target (6144
tokens) + D=2 reference (1536 tokens): ms per attn1 call and per 48-layer step for no reference / reference /
reference + mask, with MFU against 790 TFLOP/s.

    python bench/attention.py [--heads 8 --head-dim 64] [--sizes 1024,2048,4096,6144] [--gpu]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _peak_tracker_class():
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class PeakTensorBytes(TorchDispatchMode):
        """Peak bytes of tensor storages allocated inside the block and alive at the same time (deterministic,
        unlike RSS, which glibc's allocator blurs at these sizes). Kernel-internal scratch buffers that never
        become tensors are not seen; variants (a) and (b) run the same SDPA kernel."""

        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}
            self.cur = 0
            self.peak = 0

        def _free(self, key: int) -> None:
            self.cur -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    key, n = st.data_ptr(), st.nbytes()
                    if n == 0 or key in self.live:
                        continue
                    self.live[key] = n
                    self.cur += n
                    self.peak = max(self.peak, self.cur)
                    weakref.finalize(st, self._free, key)
            return out

    return PeakTensorBytes


def build(heads: int, head_dim: int, device: str, dtype):
    import torch
    from diffusers.models.transformers.transformer_ltx2 import LTX2Attention

    torch.manual_seed(0)
    dim = heads * head_dim
    attn = LTX2Attention(query_dim=dim, heads=heads, kv_heads=heads, dim_head=head_dim, bias=True, out_bias=True,
                         rope_type="split", apply_gated_attention=True).to(device, dtype).eval()
    return attn


def run_variant(variant: str, target: int, ref: int, heads: int, head_dim: int, device: str, dtype, repeats: int):
    import torch
    from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor

    from pipelines.sampler.attention import ReferenceBiasAttnProcessor, ReferenceBiasState

    PeakTensorBytes = _peak_tracker_class()  # noqa: N806
    attn = build(heads, head_dim, device, dtype)
    t = target + ref
    x = torch.randn(1, t, heads * head_dim, device=device, dtype=dtype)
    mask = None
    if variant == "ours":
        state = ReferenceBiasState()
        state.set(target, torch.full((ref,), 0.5))
        state.log_w = state.log_w.to(device)
        attn.set_processor(ReferenceBiasAttnProcessor(state))
    else:
        attn.set_processor(LTX2PerturbedAttnProcessor())
    with torch.no_grad():
        if variant == "dense":  # what LTX2InContextPipeline + the transformer hand the processor
            w = torch.ones(1, t, t, device=device, dtype=dtype)
            w[:, :target, target:] = 0.5
            w[:, target:, :target] = 0.5
            mask = (1 - w) * -10000.0
            del w
        attn(x, attention_mask=mask)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            attn(x, attention_mask=mask)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if device == "cuda":
            extra = torch.cuda.max_memory_allocated() - base
        else:  # one more call under the tensor tracker (not timed)
            with PeakTensorBytes() as tracker:
                attn(x, attention_mask=mask)
            extra = tracker.peak
        if mask is not None:  # the dense mask is part of what variant c costs (built before the call)
            extra += mask.numel() * mask.element_size()
    return {"seconds": statistics.median(times), "peak_extra_bytes": int(extra),
            "mask_bytes": int(mask.numel() * mask.element_size()) if mask is not None else 0}


def worker(args) -> None:
    import torch

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    res = run_variant(args.worker, args.target, args.ref, args.heads, args.head_dim, args.device, dtype, args.repeats)
    print(json.dumps(res))


def spawn(variant, target, ref, args, device="cpu"):
    cmd = [sys.executable, __file__, "--worker", variant, "--target", str(target), "--ref", str(ref), "--heads",
           str(args.heads), "--head-dim", str(args.head_dim), "--repeats", str(args.repeats), "--device", device]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_mode(args) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"attn1, {args.heads} heads x {args.head_dim}, float32 CPU; reference = target/4 (D=2), strength 0.5")
    print(f"{'target':>7} {'ref':>5} | {'a ms':>8} {'b ms':>8} {'c ms':>8} | {'a MB':>7} {'b MB':>7} {'c MB':>8} | "
          f"{'b/a t':>6} {'c/a t':>6} {'b/a mem':>8} {'c/a mem':>8}")
    for target in sizes:
        ref = target // 4
        t = target + ref
        dense_gb = (t * t * 4 * (1 + args.heads)) / 1024**3  # the [B,T,T] mask + its per-head copy
        a = spawn("none", target, ref, args)
        b = spawn("ours", target, ref, args)
        c = spawn("dense", target, ref, args) if dense_gb < args.max_dense_gb else {"skipped": f"~{dense_gb:.1f} GB"}
        def ms(r):
            return f"{r['seconds'] * 1e3:8.1f}" if "seconds" in r else f"{'-':>8}"
        def mb(r):
            return f"{r['peak_extra_bytes'] / 2**20:7.1f}" if "seconds" in r else f"{'-':>7}"
        def ratio(x, key):
            return f"{x[key] / max(a[key], 1e-12):6.2f}" if key in x and key in a else f"{'-':>6}"
        print(f"{target:>7} {ref:>5} | {ms(a)} {ms(b)} {ms(c)} | {mb(a)} {mb(b)} {mb(c):>8} | "
              f"{ratio(b, 'seconds')} {ratio(c, 'seconds')} {ratio(b, 'peak_extra_bytes'):>8} "
              f"{ratio(c, 'peak_extra_bytes'):>8}" + (f"   (c skipped: {c['skipped']})" if "skipped" in c else ""))


def gpu_mode(args) -> None:
    heads, hd = 32, 128
    target, ref = 6144, 1536
    c = heads * hd
    print("GPU: LTX-2.3 attn1 (32 x 128, hidden 4096, bf16), 768x512x121 target + D=2 reference")
    args.heads, args.head_dim = heads, hd
    rows = [("no reference", "none", target, 0), ("reference", "none", target, ref),
            ("reference + mask (ours)", "ours", target, ref), ("reference + mask (diffusers dense)", "dense", target, ref)]
    for label, variant, tg, rf in rows:
        r = spawn(variant, tg, rf, args, device="cuda")
        t = tg + rf
        flops = 2 * t * c * c * 4 + 4 * t * t * c  # q,k,v,out projections + QK^T and PV
        if "seconds" in r:
            mfu = flops / r["seconds"] / 790e12
            print(f"{label:>36}: {r['seconds'] * 1e3:7.2f} ms/attn1 call, x48 layers = {r['seconds'] * 48:.3f} s/step of "
                  f"attention, peak +{r['peak_extra_bytes'] / 2**30:.2f} GB, MFU {mfu * 100:.1f}%")
        else:
            print(f"{label:>36}: {r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--sizes", default="1024,2048,4096,6144")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-dense-gb", type=float, default=6.0)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--target", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ref", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
    elif args.gpu:
        gpu_mode(args)
    else:
        cpu_mode(args)


if __name__ == "__main__":
    main()
