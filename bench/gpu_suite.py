"""The whole studio on one GPU in one command: random weights of the real LTX-2.3 shapes, <= 8 minutes.

    python bench/gpu_suite.py [--out DIR]         # one H100 / H200 (CUDA), writes DIR/gpu-results.{json,md}
    python bench/gpu_suite.py --tiny --out DIR    # the same steps on a CPU at toy sizes (tests/test_gpu_suite.py)

Steps, in order (figures in the JSON, the markdown table printed last):
 1 generation, 768x512x121, distilled 8 steps, through the studio's Engine: no reference; a Union-style D=2
   reference (a random rank-64 IC-LoRA whose metadata says reference_downscale_factor=2, control video at
   384x256x121); the same + attention strength 0.5 + a spatiotemporal mask. Seconds (denoise = first to last
   transformer forward, decode = VAE decode, total = Engine.generate), peak GB, MFU of the denoise against
   790 TFLOP/s (transformer FLOPs counted from its shapes and the token counts it was called with,
   bench/ltx23_random.py), and the IC overhead (reference run / no-reference run).
 2 the same three runs through Lightricks' ltx-pipelines 1.0.0 building blocks (what ICLoraPipeline's stage 1
   does: ltx-core VideoEncoder for the reference, VideoConditionByReferenceLatent (+ the attention-strength
   wrapper with ICLoraPipeline's own mask downsampling), denoise_audio_video + euler_denoising_loop +
   simple_denoising_func over the 8 distilled sigmas, decode_video with TilingConfig.default()), on the SAME
   weights: ltx-core's modules hold them (built by tests/oracle/official.py's builder from the released 22B
   config), the studio's were loaded from that official checkpoint dict through the loader's single-file path
   (pipelines.models.loader.official_pipeline; bench/ltx23_random.py). Ratio ours / theirs. Not timed on either side: model
   loading and the prompt (theirs gets random contexts of the connectors' output shape; ours a cached prompt).
   Both denoise the full audio stream with audio<->video cross-attention (the studio makes the soundtrack by
   default, as ltx-pipelines does). The difference that stays: their LoRA would be fused into the weights at
   load, ours is a PEFT adapter (the D=2 cases pay for it).
 3 memory tiers (pipelines.models.loader.apply_tier): bf16, fp8 layerwise (sm_89+), group offload, each on a
   768x512x121 run with a D=1 control (the case choose_tier sizes for): measured peak VRAM against
   pipelines.models.memory.estimate (goal within 10%; predicted with the built components' parameter counts,
   and with the UI's defaults), weights resident after placement, seconds. Group offload runs 2 steps
   (full schedule, guidance 1) and reports s/step and 8-step seconds.
 4 two-stage 1536x1024x121 (stage 1 at 768x512, x2 latent upsampler, 3 refine steps) against the published
   53 s / ~70 GB (LTX-2, H100); then the text-encoder visit: a Gemma-3-12B-shaped encoder parked in CPU memory
   (loader.park_text_encoder), brought in by Engine.encode_prompt for one new prompt and parked again:
   seconds, peak during the visit against estimate()'s text-encoder phase, VRAM left behind.
 5 training (pipelines.training.Trainer): LoRA rank 32, 768x512x49 target + a D=1 still reference, with and
   without gradient checkpointing: s/step (median after the first step) and peak GB; anchors 4.1 s/step (full
   fine-tune, IC mode, H100) and 1.1 s/step (official LoRA trainer, RTX 5090).
 6 control preprocessors through pipelines.control.run_control on a 121x768x512 clip: Depth-Anything-V2-Small
   (real architecture from its config via transformers, random weights) on CUDA, and pose (DWPose I/O: 640x640
   YOLOX detector, 288x384 SimCC pose model, 133 keypoints) with random-weight ONNX models whose convolution
   stacks cost about what YOLOX-L / DWPose-L do (~150 / ~9 GFLOP a call), on onnxruntime's CUDA provider when it
   has one (else the CPU provider, and the table says which). Frames per second.

Time boxes (GPU): every group of steps runs in its own subprocess with a deadline counted from its spawn, so
imports are inside it: 1+2 140 s, 3 100 s, 4 110 s, 5 55 s, 6 45 s = 450 s, plus 5 s of grace each = 475 s, inside
8 minutes with the parent's own seconds; the time a group leaves unused goes to the groups after it (in
proportion), an overrun comes out of them. Planned use of each (H100-class, from the published anchors): 1+2 ~10 s imports, ~8 s build, warm-ups
~25 s, 3 + 3 runs of ~8-12 s; 3: build, bf16 and fp8 (a 1-step warm-up + one 8-step run each), rebuild, ~25 s to
move 46 GB to pinned host memory, 2 streamed steps; 4: Gemma-12B build + two 24 GB copies, then the two-stage
run (~53 s published); 5: 2 x (4 steps + a checkpoint write); 6: two warm-ups on 9 frames, two 121-frame runs.
A process that overruns is killed (its memory goes with it) and its unfinished cases say "timeout"; inside a
process each case checks the time left before it starts ("timeout: skipped ...") and an exception in one case
("error: ...", traceback in logs/) does not stop the next. Building the random 19 B-parameter stack takes
seconds on the GPU (created in bf16 on the device, a seeded normal init in place); each process builds what it
needs once (steps 1 and 2 share one build and one set of weights). Memory: the 1+2 process holds ~46 GB of
weights (one copy, shared by both sides) plus activations; step 3's group offload keeps ~46 GB pinned in host
memory (the device machine has 128 GB). --tiny runs all groups in one process (one import) with its own
budgets (225 s in all; about 45 s of CPU on an idle 2-core machine).

On the device machine (no registry access there). Here, once: `bash bench/gpu_wheels.sh` downloads into .whl/
(ignored by git) what its image lacks: diffusers==0.42.1, ltx-core==1.0.0, ltx-pipelines==1.0.0 (all pure
Python) and imageio-ffmpeg (its static ffmpeg: control videos are mp4). Already there: torch, transformers,
peft, accelerate, safetensors, einops, scipy, opencv, onnx, onnxruntime (CPU provider; onnxruntime-gpu is
~300 MB, over the 64 MB a call may carry), torchaudio. PyAV is not carried: ltx-pipelines imports it at module
level for media files the suite never opens, so a stand-in is put in its place (bench/ltx23_random.import_ltx).
Then one `run` with carry [".whl"] and timeout_s 570 (the suite stops itself by 480 s; the rest is pip and slack):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 bench/gpu_suite.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PEAK_TFLOPS = 790.0  # dense bf16 on an H100/H200, measured on a plain matmul (SPEC.md 9)
TITLES = {1: "generation (studio)", 2: "ltx-pipelines, same weights", 3: "memory tiers",
          4: "two-stage + text encoder", 5: "training step", 6: "control preprocessors"}
# (group, steps, seconds on a GPU, seconds with --tiny)
GROUPS = [("gen", (1, 2), 140, 75), ("tiers", (3,), 100, 40), ("stage2", (4,), 110, 40), ("train", (5,), 55, 40),
          ("control", (6,), 45, 30)]
TOTAL_BUDGET = {False: 475, True: 300}  # seconds for the whole suite: 8 minutes on a GPU, less 5 s for the parent
# A Full-schedule run with one model pass per step (no CFG, STG or modality guidance for video or audio): the memory
# tiers time the transformer and its placement, not the guider's extra passes.
ONE_PASS = dict(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, audio_guidance_scale=1.0, audio_stg_scale=0.0,
                audio_modality_scale=1.0)
GRACE_S = 5  # a process may overrun its budget by this much (its last case) before it is killed
# Expected figures per step: the test checks that each is present and finite.
EXPECTED = {
    1: {"no reference": ("denoise_s", "decode_s", "total_s", "peak_gb", "tflop", "mfu_pct"),
        "D=2 reference": ("denoise_s", "decode_s", "total_s", "peak_gb", "tflop", "mfu_pct", "ic_overhead"),
        "reference + strength 0.5 + mask": ("denoise_s", "decode_s", "total_s", "peak_gb", "mfu_pct", "ic_overhead")},
    2: {"no reference": ("denoise_s", "decode_s", "total_s", "mfu_pct", "ours_over_theirs"),
        "D=2 reference": ("denoise_s", "decode_s", "total_s", "mfu_pct", "ours_over_theirs"),
        "reference + strength 0.5 + mask": ("denoise_s", "decode_s", "total_s", "mfu_pct", "ours_over_theirs")},
    3: {"bf16": ("peak_gb", "predicted_gb", "peak_over_predicted", "weights_gb", "total_s"),
        "fp8": ("peak_gb", "predicted_gb", "peak_over_predicted", "weights_gb", "total_s"),
        "group_offload": ("peak_gb", "predicted_gb", "peak_over_predicted", "weights_gb", "s_per_step")},
    4: {"text encoder visit": ("park_s", "visit_s", "peak_gb", "predicted_gb", "left_behind_gb"),
        "two-stage 1536x1024": ("stage1_s", "stage2_s", "decode_s", "total_s", "peak_gb", "over_anchor")},
    5: {"no checkpointing": ("s_per_step", "peak_gb", "over_anchor_h100"),
        "gradient checkpointing": ("s_per_step", "peak_gb", "over_anchor_h100")},
    6: {"depth (DA-V2-Small)": ("fps", "seconds"), "pose (DWPose ONNX)": ("fps", "seconds")},
}


# ============================================================================================ the parent


def run_suite(args) -> int:
    import shutil
    import tempfile

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Per-step JSON, logs and inputs (a 650 MB LoRA, clips, models) live in a work folder; only three files land
    # in --out (gpu-results.json / .md and gpu-suite.log), which is what a device run can bring back.
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    (work / "logs").mkdir()
    t_start = time.time()
    total = TOTAL_BUDGET[args.tiny]
    wanted = set(args.steps) if args.steps else set(TITLES)
    groups = [(g, steps, tiny_s if args.tiny else gpu_s) for g, steps, gpu_s, tiny_s in GROUPS if wanted & set(steps)]
    # A GPU gets one process per group (a hung or OOM-killed group takes nothing else with it, and its memory is
    # gone when it ends). --tiny runs the groups one after the other in one process: the same code, one import.
    batches = [groups] if args.tiny else [[g] for g in groups]
    notes: dict[int, str] = {}
    for i, batch in enumerate(batches):
        names = [g for g, _, _ in batch]
        steps = [s for _, st, _ in batch for s in st]
        # The time left (less GRACE_S for each process still to come) is shared in proportion to the nominal
        # budgets of the groups still to run: an early finish gives the later groups more, an overrun less.
        left = total - (time.time() - t_start) - GRACE_S * (len(batches) - i)
        nominal_rest = sum(b for later in batches[i:] for _, _, b in later)
        budgets = [b * min(left / nominal_rest, 1.5) for _, _, b in batch]
        if max(budgets) < 10:
            for s in steps:
                notes[s] = f"timeout: not started, {left:.0f} s of the suite's {total} s left"
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(names), "--out", str(work),
               "--budgets", ",".join(f"{b:.1f}" for b in budgets), "--t0", f"{time.time():.3f}"] + \
            (["--tiny"] if args.tiny else [])  # budgets count from the spawn: the child's imports are in them
        log = work / "logs" / f"{'+'.join(names)}.log"
        t0 = time.time()
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                                         "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"})
            try:  # the child starts no case past its deadline; the kill is for a case that overruns or hangs
                rc = proc.wait(timeout=sum(budgets) + GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        took = time.time() - t0
        print(f"[{'+'.join(names)}] steps {','.join(map(str, steps))}: "
              f"{'killed at the deadline' if rc is None else f'exit {rc}'} after {took:.1f} s "
              f"(budget {sum(budgets):.0f} s)", flush=True)
        for s in steps:
            if rc is None:
                notes[s] = f"timeout: the process was killed after {took:.0f} s (budget {sum(budgets):.0f} s)"
            elif rc != 0:
                notes[s] = f"error: exit {rc}: {_last_line(log)}"
    results = collect(work, wanted, notes, args, time.time() - t_start)
    _write_atomic(out / "gpu-results.json", json.dumps(results, indent=2, sort_keys=True))
    table = markdown(results)
    _write_atomic(out / "gpu-results.md", table)
    with open(out / "gpu-suite.log", "w") as fh:
        for log in sorted((work / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            fh.write(f"===== {log.name}\n{text[-4_000_000:]}\n")
    if args.keep_work:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(table)
    return 0


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def collect(out: Path, wanted: set, notes: dict, args, wall: float) -> dict:
    steps = {}
    meta_path = out / "steps" / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    for s in sorted(wanted):
        p = out / "steps" / f"step{s}.json"
        rec = json.loads(p.read_text()) if p.exists() else {"step": s, "title": TITLES[s], "cases": []}
        done = {c["name"] for c in rec["cases"]}
        if s in notes:  # the process died: its missing cases get the reason
            for name in EXPECTED[s]:
                if name not in done:
                    rec["cases"].append({"name": name, "status": notes[s], "figures": {}})
        elif not rec["cases"]:
            rec["cases"] = [{"name": n, "status": "error: the step wrote nothing", "figures": {}} for n in EXPECTED[s]]
        rec["status"] = "ok" if all(c["status"] == "ok" for c in rec["cases"]) else "partial"
        steps[str(s)] = rec
    return {"mode": "tiny (CPU, toy sizes)" if args.tiny else "gpu", "wall_s": round(wall, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "meta": meta, "steps": steps,
            "peak_tflops": PEAK_TFLOPS}


def _fmt(k: str, v) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return f"{k} {v}"
        unit = {"_s": " s", "_gb": " GB", "_pct": "%"}.get(next((u for u in ("_s", "_gb", "_pct") if k.endswith(u)), ""), "")
        name = k[: -len(next((u for u in ("_s", "_gb", "_pct") if k.endswith(u)), ""))] if unit else k
        if v and abs(v) < 0.01:
            return f"{name} {v:.2g}{unit}"
        digits = 3 if abs(v) < 1 else 2 if abs(v) < 100 else 0
        return f"{name} {v:.{digits}f}{unit}"
    return f"{k} {v}"


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    head = (f"GPU suite ({results['mode']}), {results['date']}: {meta.get('device', '?')}; torch {meta.get('torch', '?')}, "
            f"diffusers {meta.get('diffusers', '?')}, ltx-pipelines {meta.get('ltx_pipelines', '?')}; "
            f"wall {results['wall_s']} s\n\n")
    rows = ["| step | case | figures | status |", "|---|---|---|---|"]
    for s, rec in results["steps"].items():
        for c in rec["cases"]:
            figs = " · ".join(_fmt(k, v) for k, v in c["figures"].items())
            if c.get("note"):
                figs += f" ({c['note']})" if figs else c["note"]
            rows.append(f"| {s} {rec['title']} | {c['name']} | {figs or '-'} | {c['status']} |")
    return head + "\n".join(rows) + "\n"


# ============================================================================================ the child


class Ctx:
    """What every step gets: the mode, the deadline, the device helpers and the step recorder."""

    def __init__(self, args):
        import torch

        self.tiny = args.tiny
        self.out = Path(args.out)
        self.deadline = time.time() + 60.0  # set per group by run_child
        self.cuda = not self.tiny
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: the GPU suite needs one (use --tiny on a CPU)")
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.scale = "tiny" if self.tiny else "full"
        self.tmp = self.out / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        (self.out / "steps").mkdir(parents=True, exist_ok=True)
        self.records: dict[int, dict] = {}
        self.write_meta()

    # -- sizes: the real ones on a GPU, toy ones on a CPU --
    @property
    def size(self) -> tuple[int, int, int]:
        return (128, 64, 9) if self.tiny else (768, 512, 121)

    # -- device helpers (the only CUDA-specific code) --
    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        """CUDA: peak allocated since reset_peak. CPU: the process's peak resident memory (never resets)."""
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**30
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def allocated_gb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated() / 2**30
        return self.peak_gb()

    def free(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()

    def left(self) -> float:
        return self.deadline - time.time()

    def warm(self, what: str, fn, need_s: float) -> None:
        """An untimed first run (allocator growth, kernel selection) when there is time for it; not a figure."""
        if self.left() < need_s:
            print(f"  warm-up '{what}' skipped: {self.left():.0f} s left", flush=True)
            return
        t0 = time.time()
        try:
            fn()
            print(f"  warm-up '{what}': {time.time() - t0:.1f} s", flush=True)
        except Exception:  # noqa: BLE001 - the timed cases will meet the same error and record it
            traceback.print_exc()
        self.free()

    # -- recording --
    def write_meta(self) -> None:
        import torch

        meta = {"torch": torch.__version__, "device": "cpu"}
        try:
            import diffusers

            meta["diffusers"] = diffusers.__version__
        except Exception:  # noqa: BLE001
            pass
        try:
            from importlib.metadata import version

            meta["ltx_pipelines"] = version("ltx-pipelines")
            meta["ltx_core"] = version("ltx-core")
        except Exception:  # noqa: BLE001
            pass
        if self.cuda:
            p = torch.cuda.get_device_properties(0)
            meta.update(device=f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}",
                        capability=[p.major, p.minor])
        _write_atomic(self.out / "steps" / "meta.json", json.dumps(meta))

    def fail_rest(self, steps, status: str) -> None:
        for step in steps:
            rec = self.records.setdefault(step, {"step": step, "title": TITLES[step], "cases": []})
            done = {c["name"] for c in rec["cases"]}
            rec["cases"] += [{"name": n, "status": status, "figures": {}} for n in EXPECTED[step] if n not in done]
            _write_atomic(self.out / "steps" / f"step{step}.json", json.dumps(rec))

    def case(self, step: int, name: str, fn, need_s: float = 0.0) -> dict | None:
        """Run one case: fn() -> (figures dict) or (figures, note). Records ok / error / skipped; never raises."""
        rec = self.records.setdefault(step, {"step": step, "title": TITLES[step], "cases": []})
        entry = {"name": name, "figures": {}, "status": "ok"}
        left = self.left()
        if left < need_s:
            entry["status"] = f"timeout: skipped, {left:.0f} s left of the step's budget (needs ~{need_s:.0f} s)"
        else:
            t0 = time.time()
            try:
                res = fn()
                figs, note = res if isinstance(res, tuple) else (res, None)
                entry["figures"] = {k: _num(v) for k, v in figs.items()}
                if note:
                    entry["note"] = note
            except Skip as exc:
                entry["status"] = f"skipped: {exc}"
            except BaseException as exc:  # noqa: BLE001 - a case must not take the others down (OOM included)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                traceback.print_exc()
                msg = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else ""
                entry["status"] = f"error: {type(exc).__name__}: {msg}"
            entry["seconds"] = round(time.time() - t0, 2)
            self.free()
        rec["cases"].append(entry)
        print(f"  step {step} / {name}: {entry['status']} {entry['figures']}", flush=True)
        _write_atomic(self.out / "steps" / f"step{step}.json", json.dumps(rec))
        return entry["figures"] if entry["status"] == "ok" else None


def bench_module(name: str):
    """Another bench script as a module (bench/<name>.py), by path: no clash with installed packages."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _raise(exc: BaseException):
    raise exc


class Skip(Exception):
    """A case that cannot run here (said in the table, not an error)."""


def _num(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(f"{float(v):.4g}")  # 4 significant digits: toy sizes give tiny numbers
    return v


# -------------------------------------------------------------------------------------------- shared inputs


def smooth_frames(n: int, w: int, h: int, seed: int = 0):
    """A moving smooth texture with a bright box: a stand-in control video (uint8 [n,h,w,3])."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    big = cv2.resize(rng.integers(0, 256, (h // 8 + 8, w // 8 + 16, 3), dtype=np.uint8), (w + 64, h + 32),
                     interpolation=cv2.INTER_CUBIC)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        dx, dy = (2 * t) % 64, t % 32
        out[t] = big[dy:dy + h, dx:dx + w]
        x = (w // 8 + 3 * t) % max(1, w - w // 4)
        out[t, h // 4: h // 2, x: x + w // 5] = 255
    return out


def spatiotemporal_mask(n: int, w: int, h: int):
    """(F,H,W) in [0,1]: a box sweeping left to right over the clip, 1 inside, 0.25 outside."""
    import numpy as np

    m = np.full((n, h, w), 0.25, np.float32)
    for t in range(n):
        x = int((w - w // 3) * t / max(1, n - 1))
        m[t, h // 6: h - h // 6, x: x + w // 3] = 1.0
    return m


def write_ic_lora(path: Path, transformer, rank: int, d: int, seed: int = 0) -> Path:
    """A random IC-LoRA in the official format on the trainer's target modules (attn1/attn2 q,k,v,out, ff),
    metadata reference_downscale_factor=d. B is small so outputs stay finite."""
    import re

    import torch

    from pipelines.models.lora import save_lora
    from pipelines.training.trainer import TARGET_MODULES

    dev = next(transformer.parameters()).device  # drawn on the GPU (~330 M values at full size), saved from the CPU
    g = torch.Generator(device=dev).manual_seed(seed)
    tensors = {}
    for name, mod in transformer.named_modules():
        if isinstance(mod, torch.nn.Linear) and re.fullmatch(TARGET_MODULES, name):
            a = torch.randn(rank, mod.in_features, generator=g, device=dev) * mod.in_features ** -0.5
            b = torch.randn(mod.out_features, rank, generator=g, device=dev) * (0.01 / rank ** 0.5)
            tensors[f"diffusion_model.{name}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"diffusion_model.{name}.lora_B.weight"] = b.to(torch.bfloat16)
    return save_lora(path, tensors, {"reference_downscale_factor": str(d)})


class Span:
    """Wall time from the first forward of a module to the end of its last one (device-synchronised), plus a
    FLOP counter fed by a pre-hook. Used on both the studio's and Lightricks' transformer."""

    def __init__(self, ctx: Ctx, module, counter_hook):
        self.ctx, self.first, self.last, self.ends = ctx, None, None, []

        def pre(mod, args, kwargs):
            if self.first is None:
                self.first = ctx.now()
            counter_hook(mod, args, kwargs)

        def post(mod, args, output):
            self.last = ctx.now()
            self.ends.append(self.last)

        self.handles = [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]

    def reset(self) -> None:
        self.first, self.last, self.ends = None, None, []

    @property
    def seconds(self) -> float:
        return (self.last - self.first) if self.first is not None and self.last is not None else float("nan")

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StudioRun:
    """Times Engine.generate: transformer span (denoise), VAE decode calls, total; counts FLOPs."""

    def __init__(self, ctx: Ctx, m):
        from ltx23_random import FlopCounter

        self.ctx, self.m = ctx, m
        self.counter = FlopCounter(dict(m.pipe.transformer.config))
        self.span = Span(ctx, m.pipe.transformer, self.counter.studio_hook)
        self.decode_s = 0.0
        vae = m.pipe.vae
        orig = vae.decode

        def timed_decode(*a, **k):
            t0 = ctx.now()
            try:
                return orig(*a, **k)
            finally:
                self.decode_s += ctx.now() - t0

        vae.decode = timed_decode  # instance attribute; the pipeline calls self.vae.decode
        self._restore = lambda: vars(vae).pop("decode", None)

    def run(self, eng, req) -> dict:
        self.span.reset()
        self.counter.flops, self.counter.calls = 0.0, 0
        self.decode_s = 0.0
        self.ctx.reset_peak()
        t0 = self.ctx.now()
        eng.generate(req, write=False, previews=False)
        total = self.ctx.now() - t0
        den = self.span.seconds
        return {"denoise_s": den, "decode_s": self.decode_s, "total_s": total, "peak_gb": self.ctx.peak_gb(),
                "tflop": self.counter.flops / 1e12, "mfu_pct": 100 * self.counter.flops / den / (PEAK_TFLOPS * 1e12),
                "video_tokens": self.counter.last.get("video", 0), "forwards": self.counter.calls}

    def close(self) -> None:
        self.span.remove()
        self._restore()


def studio_inputs(ctx: Ctx, transformer, d: int = 2) -> dict:
    """The control video (at the reference size for D=d), the mask (.npy) and the IC-LoRA file."""
    import numpy as np

    from pipelines.video_io import write_video

    w, h, n = ctx.size
    rw, rh = w // d, h // d
    ctrl = ctx.tmp / f"control_{rw}x{rh}x{n}.mp4"
    write_video(ctrl, smooth_frames(n, rw, rh), 24.0)
    mask = ctx.tmp / f"mask_{rw}x{rh}x{n}.npy"
    np.save(mask, spatiotemporal_mask(n, rw, rh))
    lora = write_ic_lora(ctx.tmp / f"ic_lora_d{d}.safetensors", transformer, rank=4 if ctx.tiny else 64, d=d)
    return {"control": ctrl, "mask": mask, "lora": lora, "ref_size": (rw, rh)}


def gen_requests(ctx: Ctx, inp: dict) -> dict:
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec

    w, h, n = ctx.size
    base = dict(prompt="a dancer on a rooftop at dusk, cinematic", width=w, height=h, frames=n, seed=1)
    ref = dict(base, controls=[ControlInput(path=str(inp["control"]))], loras=[LoraSpec(path=str(inp["lora"]))])
    return {"no reference": GenerateRequest(**base),
            "D=2 reference": GenerateRequest(**ref),
            "reference + strength 0.5 + mask": GenerateRequest(**ref, attention_strength=0.5, mask=str(inp["mask"]))}


# -------------------------------------------------------------------------------------------- steps 1 + 2


def group_gen(ctx: Ctx) -> None:
    from ltx23_random import build_stack, loaded_model
    from pipelines.requests import GenerateRequest, MemoryTier
    from pipelines.sampler.engine import Engine

    t0 = time.time()
    stack = build_stack(ctx.scale, ctx.device, ctx.dtype, text_encoder="light")
    build_s = time.time() - t0
    print(f"built the stack in {build_s:.1f} s: {stack.param_counts()}", flush=True)
    m = loaded_model(stack, MemoryTier.BF16)
    eng = Engine(m)
    inp = studio_inputs(ctx, m.pipe.transformer)
    reqs = gen_requests(ctx, inp)
    timer = StudioRun(ctx, m)
    ours: dict[str, dict] = {}
    per_run = 2 if ctx.tiny else 14  # seconds a full-size run may take (published: 9.5 s on an H100)

    # Untimed first runs: allocator growth and kernel choice at the full size (GPU), and the IC-LoRA's adapter
    # injection (both modes; a user pays it once per LoRA, not per run), so the cases time steady-state runs.
    if not ctx.tiny:
        ctx.warm("studio, no reference", lambda: timer.run(eng, reqs["no reference"]), need_s=per_run)
    small = GenerateRequest.from_dict(dict(reqs["D=2 reference"].to_dict(), width=128, height=128, frames=9))
    for name, req in reqs.items():
        if name == "D=2 reference":  # after the no-reference case: that one runs on a model with no adapter at all
            ctx.warm("studio, IC-LoRA load", lambda: eng.generate(small, write=False, previews=False),
                     need_s=per_run / 2)

        def one(name=name, req=req):
            figs = timer.run(eng, req)
            ours[name] = figs
            if name == "no reference":
                figs["build_s"] = build_s  # the random stack (both sides' weights), once per process
            if name != "no reference" and "no reference" in ours:
                figs["ic_overhead"] = figs["total_s"] / ours["no reference"]["total_s"]
                figs["ic_overhead_denoise"] = figs["denoise_s"] / ours["no reference"]["denoise_s"]
                figs["ic_overhead_flops"] = figs["tflop"] / ours["no reference"]["tflop"]
            return figs
        ctx.case(1, name, one, need_s=per_run * (1.5 if "reference" in name and name != "no reference" else 1))
    timer.close()
    # step 2: Lightricks' side on the same weights; the studio's pipeline stays as it is (its tensors are shared)
    try:
        theirs = TheirSide(ctx, stack, inp)
    except Exception as exc:  # noqa: BLE001 - e.g. ltx-core missing: every case of step 2 says why
        traceback.print_exc()
        for name in reqs:
            ctx.case(2, name, lambda exc=exc: _raise(RuntimeError(f"setting up ltx-pipelines failed: "
                                                                 f"{type(exc).__name__}: {exc}")))
        return
    if not ctx.tiny:  # only with time for it and the three cases: the studio's runs already warmed the kernels
        ctx.warm("ltx-pipelines, no reference", lambda: theirs.run("no reference"), need_s=per_run * 4)
    for name in reqs:
        def one(name=name):
            if name not in ours:
                raise Skip("the studio's run of this case did not complete")
            figs = theirs.run(name)
            figs["ours_over_theirs"] = ours[name]["total_s"] / figs["total_s"]
            figs["ours_over_theirs_denoise"] = ours[name]["denoise_s"] / figs["denoise_s"]
            figs["ours_over_theirs_decode"] = ours[name]["decode_s"] / figs["decode_s"]
            return figs, ("totals: ours = control decode + VAE encode + text connectors + denoise + decode + audio "
                          "decode; theirs = VAE encode + denoise (full audio stream, a<->v attention: see tflop) "
                          "+ tiled decode")
        ctx.case(2, name, one, need_s=per_run)


class TheirSide:
    """ICLoraPipeline's stage 1, assembled from ltx-core / ltx-pipelines building blocks on our stack's weights."""

    def __init__(self, ctx: Ctx, stack, inp: dict):
        import numpy as np
        import torch

        from ltx23_random import FlopCounter, import_ltx

        import_ltx()
        from ltx_core.model.transformer import X0Model

        self.ctx, self.stack, self.inp = ctx, stack, inp
        off = stack.official
        self.x0 = X0Model(off.transformer).eval()
        self.counter = FlopCounter(dict(stack.pipe.transformer.config))
        self.span = Span(ctx, off.transformer, self.counter.ltx_hook)
        s = stack.scale
        g = torch.Generator(device="cpu").manual_seed(3)
        L = s.max_sequence_length
        self.vctx = torch.randn(1, L, s.dim, generator=g).to(ctx.device, ctx.dtype)
        self.actx = torch.randn(1, L, s.audio_dim, generator=g).to(ctx.device, ctx.dtype)
        from pipelines.video_io import read_video

        frames, _ = read_video(inp["control"])  # the same decoded control the studio conditions on
        v = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        self.control = v.to(ctx.device, ctx.dtype)  # (1, 3, F, h, w) in [-1, 1], as load_video_conditioning gives
        self.mask_px = torch.from_numpy(np.load(inp["mask"]))[None, None].to(ctx.device)  # (1, 1, F, h, w)

    def run(self, name: str) -> dict:
        import torch

        from ltx23_random import import_ltx

        import_ltx()
        from ltx_core.components.diffusion_steps import EulerDiffusionStep
        from ltx_core.components.noisers import GaussianNoiser
        from ltx_core.conditioning import ConditioningItemAttentionStrengthWrapper, VideoConditionByReferenceLatent
        from ltx_core.model.video_vae import TilingConfig, decode_video
        from ltx_core.types import VideoLatentShape, VideoPixelShape
        from ltx_pipelines.ic_lora import ICLoraPipeline
        from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES
        from ltx_pipelines.utils.helpers import denoise_audio_video, simple_denoising_func
        from ltx_pipelines.utils.samplers import euler_denoising_loop
        from ltx_pipelines.utils.types import PipelineComponents

        ctx, s, off = self.ctx, self.stack.scale, self.stack.official
        w, h, n = ctx.size
        self.span.reset()
        self.counter.flops, self.counter.calls = 0.0, 0
        ctx.reset_peak()
        with torch.inference_mode():
            t0 = ctx.now()
            gen = torch.Generator(device=ctx.device).manual_seed(1)
            comps = PipelineComponents(dtype=ctx.dtype, device=torch.device(ctx.device))
            comps.video_latent_channels = s.latent
            conds = []
            if name != "no reference":
                lat = off.encoder(self.control)
                cond = VideoConditionByReferenceLatent(latent=lat, downscale_factor=2, strength=1.0)
                if "mask" in name:
                    lm = ICLoraPipeline._downsample_mask_to_latent(self.mask_px, VideoLatentShape.from_torch_shape(lat.shape))
                    cond = ConditioningItemAttentionStrengthWrapper(cond, attention_mask=lm * 0.5)
                conds.append(cond)
            t1 = ctx.now()

            def loop(sigmas, video_state, audio_state, stepper):
                return euler_denoising_loop(sigmas=sigmas, video_state=video_state, audio_state=audio_state,
                                            stepper=stepper,
                                            denoise_fn=simple_denoising_func(self.vctx, self.actx, self.x0))

            vs, _ = denoise_audio_video(
                output_shape=VideoPixelShape(batch=1, frames=n, width=w, height=h, fps=24.0), conditionings=conds,
                noiser=GaussianNoiser(generator=gen), sigmas=torch.tensor(DISTILLED_SIGMA_VALUES, device=ctx.device),
                stepper=EulerDiffusionStep(), denoising_loop_fn=loop, components=comps, dtype=ctx.dtype,
                device=torch.device(ctx.device))
            t2 = ctx.now()
            chunks = [c for c in decode_video(vs.latent, off.decoder, TilingConfig.default(), gen)]
            t3 = ctx.now()
        frames = sum(c.shape[0] for c in chunks)
        if frames != n:
            raise RuntimeError(f"ltx-core decoded {frames} frames, expected {n}")
        den = self.span.seconds
        return {"encode_s": t1 - t0, "denoise_s": den, "decode_s": t3 - t2, "total_s": t3 - t0,
                "peak_gb": ctx.peak_gb(), "tflop": self.counter.flops / 1e12,
                "mfu_pct": 100 * self.counter.flops / den / (PEAK_TFLOPS * 1e12),
                "video_tokens": self.counter.last.get("video", 0), "audio_tokens": self.counter.last.get("audio", 0)}


# -------------------------------------------------------------------------------------------- step 3


def group_tiers(ctx: Ctx) -> None:
    from ltx23_random import build_stack, loaded_model
    from pipelines.models.memory import estimate
    from pipelines.requests import ControlInput, GenerateRequest, MemoryTier, Schedule
    from pipelines.sampler.engine import Engine
    from pipelines.video_io import write_video

    w, h, n = ctx.size
    ctrl = ctx.tmp / f"control_{w}x{h}x{n}.mp4"
    write_video(ctrl, smooth_frames(n, w, h), 24.0)
    req = dict(prompt="a red car on a wet street at night", width=w, height=h, frames=n, seed=2,
               controls=[ControlInput(path=str(ctrl))])  # D=1 reference: the case choose_tier sizes for
    warm = GenerateRequest(prompt="warm up", width=64, height=64, frames=9, seed=0, schedule=Schedule.FULL, steps=1,
                           **ONE_PASS)  # one forward: group offload streams every block per step
    state = {}

    def build():
        state.clear()
        ctx.free()
        stack = build_stack(ctx.scale, ctx.device, ctx.dtype, text_encoder="light")
        counts = stack.param_counts()
        stack.drop_official()
        state.update(stack=stack, sizes=dict(transformer=counts["transformer"], connectors=counts["connectors"],
                                             vae=counts["vae"], text_encoder=counts["text_encoder"]))
        return stack

    def tier_case(tier: MemoryTier, steps: int | None):
        def run():
            if tier == MemoryTier.FP8 and ctx.cuda:
                import torch

                if torch.cuda.get_device_capability() < (8, 9):
                    raise Skip("fp8 layerwise casting needs compute capability 8.9+ (Ada/Hopper)")
            # bf16 then fp8 share one build (fp8 casts the resident weights in place); group offload needs bf16
            # weights again, so it builds afresh (the fp8 stack is dropped first)
            stack = build() if tier == MemoryTier.GROUP_OFFLOAD or "stack" not in state else state["stack"]
            if tier == MemoryTier.GROUP_OFFLOAD:  # the studio loads models in CPU memory first
                stack.pipe.to("cpu")
                stack.upsampler.to("cpu")
                ctx.free()
            ctx.reset_peak()
            t0 = time.time()
            m = loaded_model(stack, tier)
            place_s = time.time() - t0
            ctx.free()
            weights = ctx.allocated_gb()
            eng = Engine(m)
            if not ctx.tiny:  # kernels and first-call allocations out of the timed run
                ctx.warm(f"{tier.value}", lambda: eng.generate(warm, write=False, previews=False), need_s=5)
            r = dict(req)
            if steps:
                r.update(schedule=Schedule.FULL, steps=steps, **ONE_PASS)
            timer = StudioRun(ctx, m)
            try:
                figs = timer.run(eng, GenerateRequest(**r))
            finally:
                timer.close()
            pred = estimate(tier, w, h, n, refs=1, downscale=1, sizes=state["sizes"])
            pred_ui = estimate(tier, w, h, n, refs=1, downscale=1)
            out = {"peak_gb": figs["peak_gb"], "predicted_gb": pred.peak_gb, "predicted_ui_gb": pred_ui.peak_gb,
                   "peak_over_predicted": figs["peak_gb"] / pred.peak_gb, "weights_gb": weights,
                   "predicted_weights_gb": pred.weights_gb, "place_s": place_s}
            if steps:
                out["s_per_step"] = figs["denoise_s"] / steps
                out["est_8_steps_s"] = figs["total_s"] + (8 - steps) * out["s_per_step"]
            else:
                out.update(total_s=figs["total_s"], denoise_s=figs["denoise_s"], decode_s=figs["decode_s"])
            note = f"applied as {m.tier.value}" if m.tier != tier else None
            if not ctx.cuda:
                note = "CPU: one placement, peak = process RSS"
            return out, note
        return run

    per = 8 if ctx.tiny else 25
    ctx.case(3, "bf16", tier_case(MemoryTier.BF16, None), need_s=per)
    ctx.case(3, "fp8", tier_case(MemoryTier.FP8, None), need_s=per)
    ctx.case(3, "group_offload", tier_case(MemoryTier.GROUP_OFFLOAD, 2), need_s=per * 1.6)


# -------------------------------------------------------------------------------------------- step 4


def group_stage2(ctx: Ctx) -> None:
    from ltx23_random import build_stack, build_text_encoder, loaded_model
    from pipelines.models.loader import park_text_encoder
    from pipelines.models.memory import MARGIN_GB, estimate
    from pipelines.requests import GenerateRequest, MemoryTier
    from pipelines.sampler.engine import Engine

    stack = build_stack(ctx.scale, ctx.device, ctx.dtype, text_encoder="light")
    counts = stack.param_counts()
    stack.drop_official()
    m = loaded_model(stack, MemoryTier.BF16)
    eng = Engine(m)

    def te_visit():  # first: its cost is known and small; the two-stage run can take what is left
        light = m.pipe.text_encoder
        te = build_text_encoder(stack.scale, "gemma12b", ctx.device, ctx.dtype, len(m.pipe.tokenizer), seed=20)
        te_params = sum(p.numel() for p in te.parameters())
        m.pipe.text_encoder = te  # what a real install holds: Gemma 3 12B
        try:
            ctx.free()
            t0 = ctx.now()
            parked = park_text_encoder(m.pipe, m.device)
            park_s = ctx.now() - t0
            ctx.free()
            before = ctx.allocated_gb()
            ctx.reset_peak()
            t0 = ctx.now()
            eng.encode_prompt("a new prompt the engine has not seen, so the encoder must visit", "", False)
            visit_s = ctx.now() - t0
            peak = ctx.peak_gb()
            ctx.free()
            after = ctx.allocated_gb()
            where = next(te.parameters()).device.type
        finally:
            m.pipe.text_encoder = light
            del te
        if ctx.cuda and (not parked or where != "cpu"):
            raise RuntimeError(f"the text encoder was not parked (park returned {parked}, it is on {where})")
        sizes = dict(transformer=counts["transformer"], connectors=counts["connectors"], vae=counts["vae"],
                     text_encoder=te_params)
        predicted = estimate(MemoryTier.BF16, 768, 512, 121, refs=1, sizes=sizes).text_encoder_gb + MARGIN_GB
        return ({"te_params_b": te_params / 1e9, "park_s": park_s, "visit_s": visit_s, "peak_gb": peak,
                 "predicted_gb": predicted, "peak_over_predicted": peak / predicted, "left_behind_gb": after - before},
                f"encoder on {where} after the visit; predicted = resident weights + encoder + margin")

    ctx.case(4, "text encoder visit", te_visit, need_s=8 if ctx.tiny else 30)
    w, h, n = (256, 128, 9) if ctx.tiny else (1536, 1024, 121)

    def two_stage():
        if not ctx.tiny:
            ctx.warm("two-stage", lambda: eng.generate(GenerateRequest(prompt="warm up", width=128, height=128,
                                                                       frames=9, stages=2), write=False,
                                                       previews=False), need_s=10)
        timer = StudioRun(ctx, m)
        try:
            figs = timer.run(eng, GenerateRequest(prompt="a city street at night, rain", width=w, height=h, frames=n,
                                                  stages=2, seed=4))
        finally:
            timer.close()
        ends, first = timer.span.ends, timer.span.first
        if len(ends) != 11:
            raise RuntimeError(f"expected 8 + 3 transformer forwards, saw {len(ends)}")
        anchor_s, anchor_gb = 53.0, 70.0
        return ({"stage1_s": ends[7] - first, "stage2_s": ends[-1] - ends[7], "decode_s": figs["decode_s"],
                 "total_s": figs["total_s"], "peak_gb": figs["peak_gb"], "tflop": figs["tflop"],
                 "over_anchor": figs["total_s"] / anchor_s, "peak_over_anchor": figs["peak_gb"] / anchor_gb},
                "anchor: LTX-2 two-stage 1536x1024x121 on an H100, 53 s, ~70 GB")

    ctx.case(4, "two-stage 1536x1024", two_stage, need_s=10 if ctx.tiny else 45)


# -------------------------------------------------------------------------------------------- step 5


def group_train(ctx: Ctx) -> None:
    import json as _json

    from ltx23_random import build_stack, loaded_model
    from pipelines.requests import MemoryTier
    from pipelines.training.recipe import Recipe
    from pipelines.training.trainer import Trainer
    _fake_items = bench_module("train")._fake_items

    stack = build_stack(ctx.scale, ctx.device, ctx.dtype, text_encoder="light")
    stack.drop_official()
    m = loaded_model(stack, MemoryTier.BF16)
    s = stack.scale
    w, h, n = (128, 64, 9) if ctx.tiny else (768, 512, 49)
    f, lh, lw = (n - 1) // 8 + 1, h // 32, w // 32
    items = _fake_items(ctx.tmp, s.latent, f, lh, lw, s.max_sequence_length, s.dim, s.audio_dim)
    steps = 3 if ctx.tiny else 4

    def run(ckpt: bool):
        def go():
            recipe = Recipe(rank=32, alpha=32.0, warmup_steps=0, checkpoint_every=0, sample_every=0,
                            gradient_checkpointing=ckpt, steps=steps).validate()
            run_dir = ctx.tmp / f"train_{int(ckpt)}"
            ctx.reset_peak()
            res = Trainer(m, items, recipe, run_dir, with_reference=True).train(steps)
            rows = [_json.loads(x) for x in (run_dir / "loss.jsonl").read_text().splitlines()]
            times = sorted(r["s_per_step"] for r in rows[1:])
            sps = times[len(times) // 2]
            if not all(math.isfinite(x) for x in res.losses):
                raise RuntimeError(f"non-finite loss {res.losses}")
            return ({"s_per_step": sps, "peak_gb": ctx.peak_gb(), "tokens": f * lh * lw + lh * lw,
                     "over_anchor_h100": sps / 4.1, "over_anchor_5090": sps / 1.1},
                    "anchors: 4.1 s/step full fine-tune IC mode (H100, 832x480x49); 1.1 s/step official LoRA "
                    "trainer (RTX 5090)")
        return go

    per = 8 if ctx.tiny else 18
    ctx.case(5, "no checkpointing", run(False), need_s=per)
    ctx.case(5, "gradient checkpointing", run(True), need_s=per)


# -------------------------------------------------------------------------------------------- step 6


def save_depth_model(folder: Path, tiny: bool) -> int:
    """Depth-Anything-V2-Small's architecture (its -hf config) with random weights, or a toy version of it."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    if not tiny:
        return bench_module("control").make_depth_small_random(folder)
    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                            image_size=98, out_indices=[1, 2, 3, 4], reshape_hidden_states=False, apply_layernorm=True,
                            layerscale_value=1.0)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 24, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
                                 reassemble_factors=[4, 2, 1, 0.5], depth_estimation_type="relative")
    model = DepthAnythingForDepthEstimation(config)
    model.save_pretrained(folder)
    DPTImageProcessor(do_resize=True, size={"height": 98, "width": 98}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _conv_stack(helper, numpy_helper, inp: str, prefix: str, plan, rng):
    """ONNX Conv+Relu nodes and random weights: plan = [(c_in, c_out, stride), ...]."""
    import numpy as np

    nodes, inits, x = [], [], inp
    for i, (ci, co, st) in enumerate(plan):
        wname, bname, y, r = f"{prefix}w{i}", f"{prefix}b{i}", f"{prefix}c{i}", f"{prefix}r{i}"
        inits += [numpy_helper.from_array((rng.standard_normal((co, ci, 3, 3)) * (2 / (9 * ci)) ** 0.5)
                                          .astype(np.float32), wname),
                  numpy_helper.from_array(np.zeros(co, np.float32), bname)]
        nodes += [helper.make_node("Conv", [x, wname, bname], [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                   strides=[st, st]), helper.make_node("Relu", [y], [r])]
        x = r
    return nodes, inits, x


def conv_plan_gflop(plan, h: int, w: int) -> float:
    total = 0.0
    for ci, co, st in plan:
        h, w = (h + st - 1) // st, (w + st - 1) // st
        total += 2 * h * w * ci * co * 9
    return total / 1e9


def save_pose_models(folder: Path, tiny: bool) -> tuple[float, float]:
    """Random-weight ONNX models with DWPose's I/O (the tests' layout, bench/control.py's shapes): a detector
    [1,3,640,640] -> [1,8400,85] finding two people, a pose model [N,3,384,288] -> SimCC x [N,133,576] and
    y [N,133,768]; each runs a random convolution stack first (its output is multiplied by 0 into the result,
    so the decoded people stay put) costing about what the real network costs. Returns (det, pose) GFLOP."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    det_plan = [(3, 8, 4), (8, 8, 2)] if tiny else [(3, 64, 2), (64, 128, 2), (128, 256, 2)] + [(256, 256, 1)] * 19
    pose_plan = [(3, 8, 4)] if tiny else [(3, 32, 2), (32, 64, 2), (64, 128, 2)] + [(128, 128, 1)] * 17
    n = sum((640 // s) ** 2 for s in (8, 16, 32))
    det = np.zeros((1, n, 85), np.float32)
    for gx in (20, 50):  # two people, stride-8 cells on row 40 of the 80x80 grid
        det[0, 40 * 80 + gx] = [0, 0, np.log(20.0), np.log(45.0), 0.95, 0.9] + [0.0] * 79
    nodes, inits, feat = _conv_stack(helper, numpy_helper, "images", "d", det_plan, rng)
    nodes += [helper.make_node("ReduceMean", [feat], ["m"], keepdims=0), helper.make_node("Mul", ["m", "zero"], ["z"]),
              helper.make_node("Add", ["c", "z"], ["output"])]
    inits += [numpy_helper.from_array(det, "c"), numpy_helper.from_array(np.float32(0), "zero")]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n, 85])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "yolox_l.onnx")
    sx = rng.random((1, 133, 576), np.float32)
    sy = rng.random((1, 133, 768), np.float32)
    nodes, inits, feat = _conv_stack(helper, numpy_helper, "input", "p", pose_plan, rng)
    nodes += [helper.make_node("ReduceMean", [feat], ["pm"], axes=[1, 2, 3], keepdims=1),  # [N,1,1,1]
              helper.make_node("Squeeze", ["pm", "sq"], ["pm3"]),  # [N,1]
              helper.make_node("Unsqueeze", ["pm3", "us"], ["pz"]),  # [N,1,1]
              helper.make_node("Mul", ["pz", "zero"], ["z"]),
              helper.make_node("Shape", ["input"], ["s"]), helper.make_node("Slice", ["s", "a", "b"], ["nb"]),
              helper.make_node("Concat", ["nb", "tx"], ["shx"], axis=0),
              helper.make_node("Concat", ["nb", "ty"], ["shy"], axis=0),
              helper.make_node("Expand", ["sx", "shx"], ["ex"]), helper.make_node("Expand", ["sy", "shy"], ["ey"]),
              helper.make_node("Add", ["ex", "z"], ["simcc_x"]), helper.make_node("Add", ["ey", "z"], ["simcc_y"])]
    inits += [numpy_helper.from_array(sx, "sx"), numpy_helper.from_array(sy, "sy"),
              numpy_helper.from_array(np.float32(0), "zero"),
              numpy_helper.from_array(np.array([2, 3], np.int64), "sq"),
              numpy_helper.from_array(np.array([2], np.int64), "us"),
              numpy_helper.from_array(np.array([0], np.int64), "a"), numpy_helper.from_array(np.array([1], np.int64), "b"),
              numpy_helper.from_array(np.array([133, 576], np.int64), "tx"),
              numpy_helper.from_array(np.array([133, 768], np.int64), "ty")]
    g = helper.make_graph(nodes, "pose", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 384, 288])],
                          [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, ["batch", 133, 576]),
                           helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, ["batch", 133, 768])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              folder / "dw-ll_ucoco_384.onnx")
    return conv_plan_gflop(det_plan, 640, 640), conv_plan_gflop(pose_plan, 384, 288)


def group_control(ctx: Ctx) -> None:
    from pipelines.control import DepthOptions, PoseOptions, run_control
    from pipelines.video_io import ConformTarget, write_video

    w, h, n = (128, 96, 9) if ctx.tiny else (768, 512, 121)
    clip = ctx.tmp / f"clip_{w}x{h}x{n}.mp4"
    write_video(clip, smooth_frames(n, w, h, seed=5), 24.0)
    target = ConformTarget(width=w, height=h, frames=n)
    short = ConformTarget(width=w, height=h, frames=9)

    def depth():
        root = ctx.tmp / "models"
        params = save_depth_model(root / "depth-anything-v2-small", ctx.tiny)
        opts = DepthOptions(device=ctx.device)
        run_control("depth", clip, short, opts, models_dir=root)  # warm-up: loading is not per-clip work
        t0 = ctx.now()
        frames, _ = run_control("depth", clip, target, opts, models_dir=root)
        sec = ctx.now() - t0
        if len(frames) != n:
            raise RuntimeError(f"depth returned {len(frames)} frames for {n}")
        return {"fps": n / sec, "seconds": sec, "params_m": params / 1e6}, f"{n}x{w}x{h} on {ctx.device}"

    def pose():
        try:
            import onnxruntime as ort
        except ImportError:
            raise Skip("onnxruntime is not installed") from None
        root = ctx.tmp / "pose-models"
        det_g, pose_g = save_pose_models(root / "dwpose", ctx.tiny)
        opts = PoseOptions()  # the CUDA provider when onnxruntime has one, else the CPU provider
        run_control("pose", clip, short, opts, models_dir=root)  # warm-up: sessions load, first-run allocations
        t0 = time.perf_counter()
        frames, report = run_control("pose", clip, target, opts, models_dir=root)
        sec = time.perf_counter() - t0
        provider = report.details.get("provider") or ",".join(ort.get_available_providers())
        if len(frames) != n:
            raise RuntimeError(f"pose returned {len(frames)} frames for {n}")
        return ({"fps": n / sec, "seconds": sec, "det_gflop": det_g, "pose_gflop_per_person": pose_g},
                f"{n}x{w}x{h}, provider {provider}")

    ctx.case(6, "depth (DA-V2-Small)", depth, need_s=5 if ctx.tiny else 15)
    ctx.case(6, "pose (DWPose ONNX)", pose, need_s=5 if ctx.tiny else 15)


CHILDREN = {"gen": group_gen, "tiers": group_tiers, "stage2": group_stage2, "train": group_train,
            "control": group_control}


def run_child(args) -> int:
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()  # "modules that should be kept in float32: []" on every pipe.to(dtype)
    ctx = Ctx(args)
    if ctx.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    names = args.child.split(",")
    budgets = [float(b) for b in args.budgets.split(",")]
    steps_of = {g: st for g, st, _, _ in GROUPS}
    deadline = float(args.t0)
    for name, budget in zip(names, budgets):
        deadline += budget  # a group that finishes early leaves its time to the next one
        ctx.deadline = deadline
        t0 = time.time()
        print(f"== {name}: steps {steps_of[name]}, {budget:.0f} s", flush=True)
        try:
            CHILDREN[name](ctx)
        except Exception as exc:  # noqa: BLE001 - setup of the group failed: its unfinished cases say why
            traceback.print_exc()
            ctx.fail_rest(steps_of[name], f"error: {type(exc).__name__}: {str(exc).strip()[:240]}")
        ctx.free()
        print(f"== {name}: {time.time() - t0:.1f} s", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tiny", action="store_true", help="CPU, toy sizes: the same steps, for CI")
    ap.add_argument("--out", default=".", help="folder for gpu-results.json, gpu-results.md and gpu-suite.log")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder (per-step JSON, logs, inputs)")
    ap.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="run only these steps, e.g. 1,2 (a group runs whole)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # comma-separated group names
    ap.add_argument("--budgets", help=argparse.SUPPRESS)
    ap.add_argument("--t0", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args)
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
