"""The IC-LoRA trainer (SPEC.md 8): PEFT LoRA on the video branch, flow matching on target tokens only.

One step, reading like the sampler it trains for:
  x0 = cached target latents (packed tokens), eps ~ N(0, I), s ~ shifted logit-normal (or uniform, 10%)
  x_t = (1 - s) x0 + s eps, v = eps - x0
  sequence = [x_t ; reference tokens (clean)], per-token timestep = 1000 s for noisy target tokens, 0 for the
  reference (and for the first latent frame when first-frame conditioning is drawn, p = 0.2)
  loss = MSE(pred, v) over target tokens that are not conditioning.
The transformer is called like LTX2InContextPipeline.__call__ calls it (one silent audio token,
isolate_modalities=True so the audio stream cannot leak into the video branch).

Determinism: every random draw of step k comes from a generator seeded by (seed, k) and the data order of an
epoch from (seed, epoch), so a run resumed from a checkpoint draws the same noise, sigma and clip as an
uninterrupted one; RNG states are saved anyway for anything outside (dropout is 0 in LTX-2.3).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Callable

import numpy as np

from pipelines.errors import UserError

log = logging.getLogger(__name__)

ADAPTER = "iclora_train"
# exact names: transformer_blocks.N.attn1.to_q etc.; audio_attn1 / audio_ff / audio_to_video_attn never match
TARGET_MODULES = (r"transformer_blocks\.\d+\.(?:attn1|attn2)\.(?:to_q|to_k|to_v|to_out\.0)"
                  r"|transformer_blocks\.\d+\.ff\.net\.(?:0\.proj|2)")
CONTROL_FILES = ("sample_now", "save_now", "stop")
SHIFT_TOKENS = (1024, 4096)
SHIFT_MU = (0.95, 2.05)


# --------------------------------------------------------------------------------------------- sigma


def shift_mu(n_tokens: int) -> float:
    """mu of the logit-normal, linear in the target token count (1024 -> 0.95, 4096 -> 2.05)."""
    (n0, n1), (m0, m1) = SHIFT_TOKENS, SHIFT_MU
    return m0 + (m1 - m0) * (n_tokens - n0) / (n1 - n0)


def sample_sigma(n_tokens: int, gen, uniform_p: float = 0.1, std: float = 1.0) -> float:
    """Shifted logit-normal sigma, stretched so its 0.5% and 99.9% points map to 0 and 1; uniform with
    probability uniform_p. Always draws three numbers, so the stream stays aligned whatever the branch."""
    import torch

    u, z, r = torch.rand((), generator=gen), torch.randn((), generator=gen), torch.rand((), generator=gen)
    if float(u) < uniform_p:
        return float(r.clamp(1e-3, 1.0))
    mu = shift_mu(n_tokens)
    nd = NormalDist()
    lo = 1 / (1 + math.exp(-(mu + std * nd.inv_cdf(0.005))))
    hi = 1 / (1 + math.exp(-(mu + std * nd.inv_cdf(0.999))))
    s = 1 / (1 + math.exp(-(mu + std * float(z))))
    return float(min(1.0, max(1e-3, (s - lo) / (hi - lo))))


def lr_lambda(recipe, total_steps: int) -> Callable[[int], float]:
    warm = recipe.warmup_steps
    linear = recipe.schedule.value == "linear"

    def f(step: int) -> float:  # step = number of optimizer steps already taken
        if warm and step < warm:
            return (step + 1) / warm
        if linear:
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))
        return 1.0

    return f


# --------------------------------------------------------------------------------------------- callbacks / results


@dataclass
class TrainCallbacks:
    """Hooks for the job system. progress(step, total, loss, s_per_step); should_stop() -> True stops after the
    current step (a checkpoint is saved); on_checkpoint(step, dir); on_sample(step, mp4 path)."""

    progress: Callable[[int, int, float, float], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_sample: Callable[[int, Path], None] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total: int
    stopped: bool
    losses: list[float] = field(default_factory=list)  # losses of the steps run in THIS call
    checkpoints: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    seconds_per_step: float = 0.0


# --------------------------------------------------------------------------------------------- trainer


def inject_lora(transformer, rank: int, alpha: float, seed: int):
    """PEFT LoRA on the video-branch targets; only LoRA parameters train. A is seeded, B starts at zero."""
    import torch
    from peft import LoraConfig

    transformer.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGET_MODULES, init_lora_weights=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        transformer.add_adapter(cfg, adapter_name=ADAPTER)
    finally:
        torch.random.set_rng_state(state)
    transformer.set_adapter(ADAPTER)
    # A generation without LoRAs on this model turns every adapter layer off (the engine's _apply_loras), and a
    # layer stays off when an adapter is added to it: the training adapter would then be skipped in the forward
    # and the loss would have no gradient.
    transformer.enable_adapters()
    params = [(n, p) for n, p in transformer.named_parameters() if f".{ADAPTER}." in n and "lora_" in n]
    for _, p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    if not params:
        raise RuntimeError("LoRA injection matched no module")
    return params


def remove_lora(transformer) -> None:
    try:
        transformer.delete_adapters(ADAPTER)
    except Exception:  # noqa: BLE001 - best effort cleanup
        log.warning("could not remove the training adapter", exc_info=True)


def _step_generator(seed: int, step: int):
    import torch

    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + step * 7_919) % (2**63 - 1))


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n)]


def pack_latents(x):
    """[B,C,F,h,w] -> [B, F*h*w, C] (patch size 1, the order LTX2 pipelines use)."""
    return x.permute(0, 2, 3, 4, 1).flatten(1, 3)


def flow_matching_loss(model, transformer, latents, ref_latents, prompt_embeds, audio_prompt_embeds, prompt_mask,
                       fps: float, recipe, gen, device, amp: bool = False):
    """One IC-LoRA training loss: (loss, sigma). latents [C,F,h,w], ref_latents [C,rF,rh,rw] or None (no
    reference tokens), prompt tensors [L,D] / [L]. `model` is what is called (the transformer, or its DDP
    wrapper), `transformer` gives the RoPE helpers."""
    import torch

    r, dev = recipe, device
    x0 = latents[None].to(dev)
    _, c, f, h, w = x0.shape
    tokens = pack_latents(x0)
    n = tokens.shape[1]
    if ref_latents is not None:
        ref = ref_latents[None].to(dev)
        _, _, rf, rh, rw = ref.shape
        ref_tokens = pack_latents(ref)
    else:
        ref_tokens = tokens[:, :0]
    nr = ref_tokens.shape[1]

    s = sample_sigma(n, gen, r.uniform_p)
    eps = torch.randn(tokens.shape, generator=gen).to(dev)
    first_frame = float(torch.rand((), generator=gen)) < r.first_frame_p and f > 1
    cond = torch.zeros(n, device=dev)
    if first_frame:
        cond[: h * w] = 1.0
    x_t = (1 - s) * tokens + s * eps
    x_t = torch.where(cond[None, :, None] > 0, tokens, x_t)
    target = eps - tokens

    hidden = torch.cat([x_t, ref_tokens], dim=1)
    t = s * 1000.0
    timestep = (t * torch.cat([1 - cond, torch.zeros(nr, device=dev)]))[None]
    sigma = torch.full((1,), t, device=dev)
    coords = transformer.rope.prepare_video_coords(1, f, h, w, dev, fps=fps)
    if nr:
        ref_coords = transformer.rope.prepare_video_coords(1, rf, rh, rw, dev, fps=fps)
        d = r.reference_downscale_factor
        if d != 1:  # reference positions live in the target's pixel space, like the engine's
            ref_coords[:, 1:3] = ref_coords[:, 1:3] * d
        coords = torch.cat([coords, ref_coords], dim=2)
    audio = torch.zeros(1, 1, transformer.config.audio_in_channels, device=dev)  # one silent audio token
    audio_coords = transformer.audio_rope.prepare_audio_coords(1, 1, dev)
    mask = prompt_mask[None].to(dev)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        pred, _ = model(
            hidden_states=hidden, audio_hidden_states=audio,
            encoder_hidden_states=prompt_embeds[None].to(dev),
            audio_encoder_hidden_states=audio_prompt_embeds[None].to(dev),
            timestep=timestep, audio_timestep=sigma, sigma=sigma, audio_sigma=sigma,
            encoder_attention_mask=mask, audio_encoder_attention_mask=mask,
            num_frames=f, height=h, width=w, fps=fps, audio_num_frames=1,
            video_coords=coords, audio_coords=audio_coords, isolate_modalities=True,
            use_cross_timestep=True, return_dict=False)
    err = ((pred[:, :n].float() - target) ** 2).mean(-1)[0]
    keep = 1 - cond
    return (err * keep).sum() / keep.sum(), s


class Trainer:
    """Train one IC-LoRA on cached items. Use train(); the run folder layout:
    loss.jsonl, checkpoints/step_XXXXX/{lora.safetensors, lora.sanity.json, state.pt, sample.mp4},
    control/{sample_now,save_now,stop}, validation/reference.png, lora.safetensors (final export)."""

    def __init__(self, loaded, items: list, recipe, run_dir: str | os.PathLike, *, base_model: str = "tiny",
                 trigger: str | None = None, validation_reference: str | None = None,
                 callbacks: TrainCallbacks | None = None, with_reference: bool = True):
        if not items:
            raise UserError("nothing to train on: the cache is empty")
        self.m, self.items, self.recipe = loaded, items, recipe
        self.run_dir = Path(run_dir)
        self.base_model, self.trigger = base_model, trigger
        self.validation_reference = validation_reference
        self.cb = callbacks or TrainCallbacks()
        self.with_reference = with_reference  # False only for benchmarks (the cost of the reference tokens)
        self.transformer = loaded.pipe.transformer
        if loaded.bias_state is None:  # the same attention processor generation uses (validation samples)
            from pipelines.sampler.attention import install_reference_bias

            loaded.bias_state = install_reference_bias(loaded.pipe.transformer)
        self.device = loaded.device
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.acc = None
        self._data: dict[int, dict] = {}
        for sub in ("checkpoints", "control", "validation"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)

    # ---- setup ----
    def setup(self, total_steps: int) -> None:
        import torch

        r = self.recipe
        self.params = inject_lora(self.transformer, r.rank, r.alpha, r.seed)
        self.names = [n for n, _ in self.params]
        if r.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()
        self.opt = torch.optim.AdamW([p for _, p in self.params], lr=r.lr, weight_decay=r.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(r, total_steps))
        self.amp = self.device != "cpu" and r.mixed_precision == "bf16"
        if self.world > 1:  # accelerate launch: DDP over the same loop; rank 0 writes files
            from accelerate import Accelerator

            self.acc = Accelerator(mixed_precision="bf16" if self.amp else "no")
            self.device = str(self.acc.device)
            self.model, self.opt, self.sched = self.acc.prepare(self.transformer, self.opt, self.sched)
        else:
            self.model = self.transformer

    def teardown(self) -> None:
        if self.recipe.gradient_checkpointing:
            self.transformer.disable_gradient_checkpointing()
        self.transformer.eval()
        remove_lora(self.transformer)

    @property
    def is_main(self) -> bool:
        return self.acc is None or self.acc.is_main_process

    # ---- data ----
    def item_for_step(self, step: int) -> int:
        """Index of the item trained at (0-based) step; the data order is a function of (seed, step)."""
        n = len(self.items)
        k = step * self.world + (self.acc.process_index if self.acc else 0)
        return epoch_order(self.recipe.seed, k // n, n)[k % n]

    def batch(self, idx: int) -> dict:
        if idx not in self._data:
            from pipelines.training.cache import load_item

            self._data[idx] = load_item(self.items[idx])
        return self._data[idx]

    # ---- one step ----
    def loss(self, step: int):
        """The flow-matching loss of (0-based) step `step`, graph attached."""
        idx = self.item_for_step(step)
        item, data = self.items[idx], self.batch(idx)
        ref = data["ref_latents"] if self.with_reference else None
        return flow_matching_loss(self.model, self.transformer, data["latents"], ref, data["prompt_embeds"],
                                  data["audio_prompt_embeds"], data["prompt_mask"], item.fps, self.recipe,
                                  _step_generator(self.recipe.seed, step), self.device, self.amp)

    # ---- checkpoints ----
    def ckpt_dir(self, step: int) -> Path:
        return self.run_dir / "checkpoints" / f"step_{step:05d}"

    def save_checkpoint(self, step: int) -> Path:
        final = self.ckpt_dir(step)
        if not self.is_main:
            return final
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self._fill_checkpoint(tmp, step)
            # swap in whole: the old folder is moved aside first (a kill between the two renames leaves
            # the previous checkpoints intact and only hidden leftovers, removed at the next start)
            old = None
            if final.exists():
                old = final.with_name(f".{final.name}.old{os.getpid()}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half checkpoint behind
            raise
        if self.cb.on_checkpoint:
            self.cb.on_checkpoint(step, final)
        return final

    def _fill_checkpoint(self, tmp: Path, step: int) -> None:
        import torch

        from pipelines.training.export import export_lora

        state = {
            "step": step, "data_position": step, "adapter": {n: p.detach().cpu().clone() for n, p in self.params},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "rng": {"torch": torch.random.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "recipe": self.recipe.to_dict(),
        }
        torch.save(state, tmp / "state.pt")
        export_lora(self.transformer, tmp / "lora.safetensors", self.recipe, steps=step, base_model=self.base_model,
                    trigger=self.trigger)

    def clean_stale(self) -> list[Path]:
        """Remove what a killed run left half-written: hidden checkpoint folders (``.step_N.tmpPID`` being
        filled, ``.step_N.oldPID`` being replaced) and the final export's temp file. Finished checkpoints are
        never touched; the run then resumes from the last one that has its state."""
        if not self.is_main:
            return []
        removed = []
        ckdir = self.run_dir / "checkpoints"
        for p in ckdir.glob(".step_*.old*"):  # killed between the two renames: the old one goes back
            final = ckdir / p.name[1:].split(".old")[0]
            if not final.exists() and (p / "state.pt").exists():
                os.replace(p, final)
            else:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        for p in ckdir.glob(".step_*.tmp*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        for p in self.run_dir.glob(".lora.safetensors.tmp*"):
            p.unlink(missing_ok=True)
            removed.append(p)
        if removed:
            log.warning("removed %d half-written file(s) of an earlier, interrupted run: %s", len(removed),
                        ", ".join(p.name for p in removed))
        return removed

    def latest_checkpoint(self) -> Path | None:
        found = sorted(p for p in (self.run_dir / "checkpoints").glob("step_*")
                       if re.fullmatch(r"step_\d{5,}", p.name) and (p / "state.pt").exists())
        return found[-1] if found else None

    def load_checkpoint(self, path: Path) -> int:
        import torch

        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(state["adapter"][n].to(p.device, p.dtype))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.random.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(state["step"])

    # ---- validation sample ----
    def reference_image(self) -> Path:
        """The image every validation sample uses (saved once in validation/reference.png)."""
        from pipelines.video_io import write_image

        out = self.run_dir / "validation" / "reference.png"
        if out.exists():
            return out
        if self.validation_reference:
            shutil.copyfile(self.validation_reference, out)
            return out
        from pipelines.training.references import ReferenceAssignment, load_reference

        ref = self.items[-1].reference
        ref = dict(ref, box=tuple(ref["box"]) if ref.get("box") else None)
        return write_image(out, load_reference(ReferenceAssignment(**ref), frames=1)[0])

    def sample(self, step: int, lora_path: Path, out_dir: Path) -> Path | None:
        """Generate the validation video with the engine (LoRA file as a user would load it) + side by side."""
        import torch

        from pipelines.requests import ControlInput, GenerateRequest, LoraSpec
        from pipelines.sampler.engine import Engine
        from pipelines.training.cache import free_encoders, load_encoders

        if not self.is_main:
            return None
        r = self.recipe
        ref = self.reference_image()
        prompt = (f"{self.trigger} " if self.trigger else "") + r.validation_prompt
        req = GenerateRequest(prompt=prompt, model=self.base_model, width=r.validation_width,
                              height=r.validation_height, frames=r.validation_frames, seed=r.validation_seed,
                              controls=[ControlInput(path=str(ref))], loras=[LoraSpec(path=str(lora_path), weight=1.0)])
        eng = Engine(self.m)
        was_training = self.transformer.training
        load_encoders(self.m, text=False)  # the engine brings the text encoder in for the prompt itself
        self.transformer.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*peft_config.*")  # a second adapter is intended here
                res = eng.generate(req, out_path=out_dir / "sample.mp4", previews=False)
        finally:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                for name in list(eng._adapters.values()):
                    self.m.pipe.delete_adapters(name)
            self.transformer.set_adapter(ADAPTER)
            self.transformer.enable_adapters()  # the sample may have run with every adapter off
            for _, p in self.params:
                p.requires_grad_(True)
            self.transformer.train(was_training)
            free_encoders(self.m)
        self._side_by_side(ref, res.frames, out_dir / "side_by_side.mp4", req.fps)
        if self.cb.on_sample:
            self.cb.on_sample(step, res.path)
        return res.path

    @staticmethod
    def _side_by_side(ref_png: Path, frames: np.ndarray, out: Path, fps: float) -> None:
        import cv2

        from pipelines.video_io import read_image, write_video

        ref = read_image(ref_png)
        h = frames.shape[1]
        w = max(2, int(round(ref.shape[1] * h / ref.shape[0] / 2)) * 2)
        ref = cv2.resize(ref, (w, h), interpolation=cv2.INTER_AREA)
        both = np.concatenate([np.broadcast_to(ref, (len(frames), h, w, 3)), frames], axis=2)
        write_video(out, np.ascontiguousarray(both), fps)

    # ---- control files ----
    def _control(self, name: str) -> bool:
        p = self.run_dir / "control" / name
        if p.exists():
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            return True
        return False

    # ---- the loop ----
    def train(self, total_steps: int | None = None, resume: bool = False) -> TrainResult:
        import torch

        r = self.recipe
        total = int(total_steps or r.steps)
        self.clean_stale()
        self.setup(total)
        start = 0
        loss_log = self.run_dir / "loss.jsonl"
        if resume:
            ck = self.latest_checkpoint()
            if ck is not None:
                start = self.load_checkpoint(ck)
                log.info("resumed from %s (step %d)", ck, start)
        _truncate_log(loss_log, start)
        for name in CONTROL_FILES:  # a stale request from a previous run is not a request to this one
            (self.run_dir / "control" / name).unlink(missing_ok=True)
        result = TrainResult(run_dir=self.run_dir, step=start, total=total, stopped=False)
        times: list[float] = []
        try:
            for step in range(start, total):
                t0 = time.perf_counter()
                loss, s = self.loss(step)
                if self.acc is not None:
                    self.acc.backward(loss)
                else:
                    loss.backward()
                if r.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for _, p in self.params], r.grad_clip)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise UserError(f"loss became {value} at step {step + 1}; lower the learning rate "
                                    f"(now {r.lr:g}) or resume from an earlier checkpoint")
                dt = time.perf_counter() - t0
                times.append(dt)
                done = step + 1
                result.step = done
                result.losses.append(value)
                if self.is_main:
                    with loss_log.open("a") as fh:
                        fh.write(json.dumps({"step": done, "loss": value, "sigma": round(s, 5),
                                             "lr": self.sched.get_last_lr()[0], "s_per_step": round(dt, 4)}) + "\n")
                if self.cb.progress:
                    self.cb.progress(done, total, value, float(np.median(times[-20:])))
                stop = self._control("stop") or bool(self.cb.should_stop and self.cb.should_stop())
                want_save = self._control("save_now")
                want_sample = self._control("sample_now")
                periodic = bool(r.checkpoint_every) and done % r.checkpoint_every == 0
                if periodic or want_save or want_sample or stop or done == total:
                    ck = self.save_checkpoint(done)
                    result.checkpoints.append(ck)
                    sample_due = bool(r.sample_every) and done % r.sample_every == 0 and periodic
                    if want_sample or sample_due:
                        p = self.sample(done, ck / "lora.safetensors", ck)
                        if p is not None:
                            result.samples.append(p)
                if stop:
                    result.stopped = True
                    break
            if self.is_main and result.checkpoints:
                last = self.ckpt_dir(result.step) / "lora.safetensors"
                tmp = self.run_dir / ".lora.safetensors.tmp"
                shutil.copyfile(last, tmp)
                os.replace(tmp, self.run_dir / "lora.safetensors")
                shutil.copyfile(last.with_suffix(".sanity.json"), self.run_dir / "lora.sanity.json")
        finally:
            self.teardown()
        result.seconds_per_step = float(np.median(times)) if times else 0.0
        return result


def _truncate_log(path: Path, step: int) -> None:
    """Drop loss lines after `step` (a killed run logged steps its last checkpoint does not hold)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


def read_losses(run_dir: str | os.PathLike) -> list[dict]:
    p = Path(run_dir) / "loss.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- the whole run


def resolve_model(model: str, models_dir: str | None = None):
    """'tiny', a model name in the models folder, or a path to a diffusers model folder."""
    from pipelines.config import Paths
    from pipelines.models.registry import get_spec, tiny_spec

    if model == "tiny":
        return tiny_spec()
    p = Path(model).expanduser()
    if p.is_dir() and (p / "model_index.json").exists():
        return get_spec(p.name, p.parent)
    return get_spec(model, models_dir or Paths.resolve().models_dir)


def _main_process_first():
    """accelerate's main_process_first() under `accelerate launch` / torchrun (WORLD_SIZE > 1), else a no-op."""
    import contextlib

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return contextlib.nullcontext()
    import torch
    from accelerate import PartialState

    # the same process group the Trainer's Accelerator joins (gloo on CPU-only hosts, nccl on GPUs)
    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def extract_dir_name() -> str:
    """The run-folder subfolder a dataset zip is extracted to (one per rank under torchrun / accelerate)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return ".dataset" if world <= 1 else f".dataset-rank{int(os.environ.get('RANK', '0'))}"


def run_training(req, loaded=None, callbacks: TrainCallbacks | None = None,
                 on_status: Callable[[str], None] | None = None) -> TrainResult:
    """TrainRequest -> dataset report -> references -> cache -> train -> final export in RUN_DIR."""
    from pipelines.limits import active

    req = req.validate()
    recipe = req.recipe()
    active().check_train(recipe)  # buckets, validation size and steps within the limits, before any work
    say = on_status or (lambda msg: log.info(msg))
    run = Path(req.out).expanduser()
    run.mkdir(parents=True, exist_ok=True)
    # a zip is extracted inside the run folder for this run only: removed when the run ends, fails or is
    # stopped, and a copy a killed run left behind is removed first (a resume extracts it again)
    extract = run / extract_dir_name() if Path(req.data).suffix.lower() == ".zip" else None
    if extract is not None:
        shutil.rmtree(extract, ignore_errors=True)
    try:
        return _run_training(req, recipe, run, extract, loaded, callbacks, say)
    finally:
        if extract is not None:
            shutil.rmtree(extract, ignore_errors=True)


def _run_training(req, recipe, run: Path, extract: Path | None, loaded, callbacks, say) -> TrainResult:
    from pipelines.training.cache import free_encoders, load_encoders, preprocess
    from pipelines.training.dataset import scan_dataset
    from pipelines.training.references import assign_references

    report = scan_dataset(req.data, trigger=req.trigger, bucket_multiple=recipe.bucket_multiple,
                          max_frames=recipe.max_frames, target_area=recipe.target_area, face_detector=None,
                          extract_dir=extract)
    if not report.ok:
        raise UserError("the dataset cannot be trained: " + "; ".join(report.errors))
    say(f"dataset: {len(report.clips)} clip(s); buckets: {', '.join(report.buckets)}")
    assignments = assign_references(report, seed=recipe.seed, overrides=req.reference_overrides or None)
    (run / "request.json").write_text(json.dumps(req.to_dict(), indent=2))
    (run / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    if loaded is None:
        from pipelines.models.loader import default_cache

        loaded = default_cache().get(resolve_model(req.model, req.models_dir))
    load_encoders(loaded)  # the text encoder may be parked in CPU memory (resident tiers): captions need it
    with _main_process_first():  # multi-process: rank 0 fills the cache, the others then find it filled
        items = preprocess(report, assignments, loaded, run / "cache", recipe,
                           on_item=lambda i, n, name, skip: say(f"cache {i}/{n}: {name}"
                                                               + (" (cached)" if skip else "")))
    free_encoders(loaded)
    try:
        trainer = Trainer(loaded, items, recipe, run, base_model=loaded.spec.name, trigger=report.trigger,
                          validation_reference=req.validation_reference, callbacks=callbacks)
        return trainer.train(recipe.steps, resume=req.resume)
    finally:
        # the model is shared with the studio's generator: give it back as the loader placed it
        from pipelines.models.loader import park_text_encoder
        from pipelines.requests import MemoryTier

        load_encoders(loaded, text=False)
        if loaded.device != "cpu" and loaded.tier in (MemoryTier.BF16, MemoryTier.FP8) \
                and not park_text_encoder(loaded.pipe, loaded.device):
            load_encoders(loaded)


__all__ = ["Trainer", "TrainCallbacks", "TrainResult", "run_training", "sample_sigma", "shift_mu", "inject_lora",
           "TARGET_MODULES", "read_losses", "epoch_order", "flow_matching_loss", "pack_latents", "resolve_model"]
