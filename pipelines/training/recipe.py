"""Training recipes (presets) and the TrainRequest a job or the CLI hands to the trainer.

A recipe is plain data (presets/<name>.json; the Face preset is also built in, so a missing file never breaks
training). Defaults follow SPEC.md 8: rank 32, alpha 32, lr 1e-4 AdamW, bf16, gradient checkpointing,
checkpoint + validation sample every 250 steps, 500 recommended, 750-1000 to sharpen.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path

from pipelines.errors import UserError

TRAIN_REQUEST_VERSION = 1


def _known_fields(cls, data, what: str) -> dict:
    """A copy of ``data`` after checking it is a JSON object whose keys are all fields of dataclass ``cls``."""
    if not isinstance(data, dict):
        raise UserError(f"a {what} {'request' if what == 'train' else 'recipe'} must be a JSON object")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise UserError(f"unknown {what} setting(s): {', '.join(unknown)}")
    return dict(data)


class LrSchedule(str, Enum):
    CONSTANT = "constant"  # linear warmup, then constant
    LINEAR = "linear"  # linear warmup, then linear decay to 0 at the last step


@dataclass
class Recipe:
    """Everything that decides what is learned. Saved into the run folder and into the exported LoRA."""

    name: str = "face"
    rank: int = 32
    alpha: float = 32.0
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: LrSchedule = LrSchedule.CONSTANT
    steps: int = 1000  # checkpoints (with samples) at 250/500/750/1000: compare them, 500 is the usual pick
    checkpoint_every: int = 250
    sample_every: int = 250  # validation sample at checkpoints that are multiples of this (0 = never)
    grad_clip: float = 1.0
    first_frame_p: float = 0.2  # probability of first-frame conditioning
    uniform_p: float = 0.1  # share of uniform sigma samples
    reference_frames: int = 1  # 1 = the reference is a still (1 latent frame); 8n+1 = a looped still
    reference_downscale_factor: int = 1
    target_area: int = 512 * 512
    max_frames: int = 49
    bucket_multiple: int = 32
    gradient_checkpointing: bool = True
    mixed_precision: str = "bf16"  # bf16 autocast on GPU; CPU always runs fp32
    seed: int = 42
    validation_prompt: str = "a close-up portrait video of the subject, soft natural light, looking at the camera"
    validation_seed: int = 7
    validation_width: int = 256
    validation_height: int = 256
    validation_frames: int = 9
    default_caption: str = "a video of the subject"
    recommended_steps: list[int] = field(default_factory=lambda: [250, 500, 750, 1000])

    def validate(self) -> "Recipe":
        checks = [
            (self.rank >= 1, f"rank={self.rank} must be at least 1"),
            (self.alpha > 0, f"alpha={self.alpha} must be positive"),
            (0 < self.lr <= 1.0, f"lr={self.lr} must be in (0, 1]"),
            (self.steps >= 1, f"steps={self.steps} must be at least 1"),
            (self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be >= 0"),
            (self.checkpoint_every >= 0, f"checkpoint_every={self.checkpoint_every} must be >= 0 (0 = only at the end)"),
            (self.sample_every >= 0, f"sample_every={self.sample_every} must be >= 0 (0 = never)"),
            (0 <= self.first_frame_p <= 1, f"first_frame_p={self.first_frame_p} must be in [0, 1]"),
            (0 <= self.uniform_p <= 1, f"uniform_p={self.uniform_p} must be in [0, 1]"),
            (self.reference_frames >= 1 and (self.reference_frames - 1) % 8 == 0,
             f"reference_frames={self.reference_frames} must be 8n+1 (1 = a still)"),
            (self.reference_downscale_factor in (1, 2, 4), f"reference_downscale_factor={self.reference_downscale_factor} must be 1, 2 or 4"),
            (self.max_frames >= 1 and (self.max_frames - 1) % 8 == 0, f"max_frames={self.max_frames} must be 8n+1"),
            (self.mixed_precision in ("bf16", "fp32"), f"mixed_precision={self.mixed_precision!r} must be bf16 or fp32"),
            (self.validation_width % 32 == 0 and self.validation_height % 32 == 0,
             f"validation size {self.validation_width}x{self.validation_height} must be multiples of 32"),
            ((self.validation_frames - 1) % 8 == 0, f"validation_frames={self.validation_frames} must be 8n+1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"recipe {self.name!r}: {msg}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schedule"] = self.schedule.value
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        data = _known_fields(cls, data, "recipe")
        try:
            if "schedule" in data:
                data["schedule"] = LrSchedule(data["schedule"])
            return cls(**data).validate()
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid recipe: {exc}") from None


FACE = Recipe()
BUILTIN = {"face": FACE}


def load_preset(name_or_path: str) -> Recipe:
    """A preset by name (presets/<name>.json, else the built-in) or a path to a recipe .json file."""
    from pipelines.config import PRESETS_DIR

    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        path = p
    else:
        path = PRESETS_DIR / f"{name_or_path}.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read preset {path}: {exc}") from None
        return Recipe.from_dict(data.get("recipe", data))
    if name_or_path in BUILTIN:
        return Recipe.from_dict(BUILTIN[name_or_path].to_dict())
    raise UserError(f"unknown preset {name_or_path!r}; known: {', '.join(sorted(BUILTIN))} (or a recipe .json path)")


@dataclass
class TrainRequest:
    """One training run: data, run folder, model and the recipe (preset + overrides)."""

    data: str
    out: str
    preset: str = "face"
    model: str = "tiny"  # "tiny", a model name in models_dir, or a diffusers model folder
    models_dir: str | None = None
    trigger: str | None = None
    resume: bool = False
    overrides: dict = field(default_factory=dict)  # recipe fields that replace the preset's
    reference_overrides: dict = field(default_factory=dict)  # {clip name: image path}
    validation_reference: str | None = None  # image for validation samples (default: a reference crop)
    version: int = TRAIN_REQUEST_VERSION

    def recipe(self) -> Recipe:
        base = load_preset(self.preset).to_dict()
        unknown = sorted(set(self.overrides) - set(base))
        if unknown:
            raise UserError(f"unknown recipe override(s): {', '.join(unknown)}")
        base.update(self.overrides)
        return Recipe.from_dict(base)

    def validate(self) -> "TrainRequest":
        if not self.data:
            raise UserError("no dataset given: pass a folder or .zip of clips")
        if not Path(self.data).expanduser().exists():
            raise UserError(f"dataset {self.data} does not exist")
        if not self.out:
            raise UserError("no run folder given (--out RUN_DIR)")
        if self.validation_reference and not Path(self.validation_reference).exists():
            raise UserError(f"validation reference {self.validation_reference} does not exist")
        self.recipe()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainRequest":
        data = _known_fields(cls, data, "train")
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise UserError(f"invalid train request: {exc}") from None


__all__ = ["Recipe", "LrSchedule", "FACE", "load_preset", "TrainRequest"]
