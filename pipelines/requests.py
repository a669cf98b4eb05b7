"""Typed requests: one per kind of work (DESIGN.md). A request is the UI's state, the queue item, the API payload,
the CLI's arguments, the preset file's schema and the metadata written beside every output. Reproducing an
output = loading its metadata back into a request.

Validation raises UserError with the field named. No heavy imports here: the UI imports this module.
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.errors import UserError

REQUEST_VERSION = 1


class Schedule(str, enum.Enum):
    DISTILLED = "distilled"  # 8 fixed sigmas, CFG 1 (SPEC.md 3)
    FULL = "full"  # N shifted steps with CFG


class MemoryTier(str, enum.Enum):
    AUTO = "auto"
    BF16 = "bf16"  # everything resident in bf16
    FP8 = "fp8"  # fp8 storage, bf16 compute (layerwise casting)
    OFFLOAD = "offload"  # model CPU offload
    GROUP_OFFLOAD = "group_offload"  # block-level offload with streams (24 GB cards)


class ControlKind(str, enum.Enum):
    CANNY = "canny"
    DEPTH = "depth"
    POSE = "pose"
    PASSTHROUGH = "passthrough"
    MOTION_TRACK = "motion_track"
    FACE = "face"


DISTILLED_SIGMAS = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0]
STAGE2_SIGMAS = [0.909375, 0.725, 0.421875, 0.0]


@dataclass
class LoraSpec:
    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """'FILE[:WEIGHT]' as typed on the CLI."""
        path, sep, w = text.rpartition(":")
        if sep and path and _is_number(w):
            return cls(path=path, weight=float(w))
        return cls(path=text, weight=1.0)


@dataclass
class ControlInput:
    path: str  # a control video (already a control signal: depth / canny / pose / track render) or an image
    strength: float = 1.0  # conditioning strength: reference timestep t * (1 - strength)
    kind: ControlKind | None = None  # for metadata and presets only


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@dataclass
class GenerateRequest:
    prompt: str
    negative_prompt: str = ""
    model: str = "tiny"
    width: int = 768
    height: int = 512
    frames: int = 121
    fps: float = 24.0
    seed: int = 0
    schedule: Schedule = Schedule.DISTILLED
    steps: int = 8
    guidance_scale: float = 1.0
    stages: int = 1
    stage2_keep_ic: bool = False
    tier: MemoryTier = MemoryTier.AUTO
    image: str | None = None
    image_strength: float = 1.0
    controls: list[ControlInput] = field(default_factory=list)
    mask: str | None = None  # .npy (H,W) or (F,H,W) in [0,1] at REFERENCE pixel size
    attention_strength: float = 1.0
    loras: list[LoraSpec] = field(default_factory=list)
    conform_controls: bool = True  # conform control videos to the target (frames/size/fps) and report it
    version: int = REQUEST_VERSION

    def validate(self) -> "GenerateRequest":
        for name, enum_type in (("schedule", Schedule), ("tier", MemoryTier)):  # "full" as well as Schedule.FULL
            v = getattr(self, name)
            if not isinstance(v, enum_type):
                try:
                    setattr(self, name, enum_type(v))
                except ValueError:
                    raise UserError(f"{name}={v!r} must be one of: "
                                    f"{', '.join(e.value for e in enum_type)}") from None
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UserError("prompt is empty: describe the video you want")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 32 or v % 32:
                raise UserError(f"{name}={v} must be a positive multiple of 32 (LTX-2 VAE compresses 32x)")
        if self.width * self.height > 2048 * 2048:
            raise UserError(f"{self.width}x{self.height} is larger than the 2048x2048 the model supports")
        if not isinstance(self.frames, int) or self.frames < 1 or (self.frames - 1) % 8:
            ok = max(1, (int(self.frames) - 1) // 8 * 8 + 1) if isinstance(self.frames, int) and self.frames > 0 else 1
            raise UserError(f"frames={self.frames} must be 8n+1 (1, 9, 17, ..., 121); nearest below is {ok}")
        if not (1 <= float(self.fps) <= 120):
            raise UserError(f"fps={self.fps} must be between 1 and 120")
        if self.stages not in (1, 2):
            raise UserError(f"stages={self.stages} must be 1 or 2")
        if self.stages == 2 and (self.width % 64 or self.height % 64):
            raise UserError(f"two-stage runs need width and height multiples of 64 (got {self.width}x{self.height})")
        if self.schedule == Schedule.FULL and not (1 <= self.steps <= 200):
            raise UserError(f"steps={self.steps} must be between 1 and 200")
        if not (0.0 <= self.guidance_scale <= 20.0):
            raise UserError(f"guidance_scale={self.guidance_scale} must be between 0 and 20")
        for name in ("attention_strength", "image_strength"):
            v = getattr(self, name)
            if not (0.0 <= float(v) <= 1.0):
                raise UserError(f"{name}={v} must be between 0 and 1")
        for i, c in enumerate(self.controls):
            if not (0.0 <= float(c.strength) <= 1.0):
                raise UserError(f"controls[{i}].strength={c.strength} must be between 0 and 1")
        for i, lo in enumerate(self.loras):
            if not (-4.0 <= float(lo.weight) <= 4.0):
                raise UserError(f"loras[{i}].weight={lo.weight} must be between -4 and 4")
        if self.mask and not self.controls:
            raise UserError("an attention mask needs a control (reference) video to apply to")
        if not isinstance(self.seed, int) or not (0 <= self.seed < 2**63):
            raise UserError(f"seed={self.seed} must be a non-negative integer")
        return self

    # -- (de)serialisation: the same dict is the API payload, the preset schema and the sidecar metadata --
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schedule"] = self.schedule.value
        d["tier"] = self.tier.value
        for c in d["controls"]:
            c["kind"] = c["kind"].value if isinstance(c["kind"], ControlKind) else c["kind"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerateRequest":
        if not isinstance(data, dict):
            raise UserError("settings must be a JSON object")
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown setting(s): {', '.join(unknown)}")
        try:
            if "schedule" in data:
                data["schedule"] = Schedule(data["schedule"])
            if "tier" in data:
                data["tier"] = MemoryTier(data["tier"])
            data["controls"] = [
                ControlInput(path=c["path"], strength=float(c.get("strength", 1.0)),
                             kind=ControlKind(c["kind"]) if c.get("kind") else None)
                for c in data.get("controls") or []
            ]
            data["loras"] = [LoraSpec(path=lo["path"], weight=float(lo.get("weight", 1.0))) for lo in data.get("loras") or []]
            for k in ("width", "height", "frames", "seed", "steps", "stages"):
                if k in data and data[k] is not None:
                    data[k] = int(data[k])
            req = cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"invalid settings: {exc}") from None
        return req

    @classmethod
    def from_json_file(cls, path: str | Path) -> "GenerateRequest":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read settings from {path}: {exc}") from None
        if isinstance(data, dict) and "request" in data:  # a sidecar written beside an output
            data = data["request"]
        return cls.from_dict(data)
