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

REQUEST_VERSION = 2
# Settings a version-1 request (written before guidance, audio and keyframes existed) ran with: read back, an old
# sidecar asks for what it got then (CFG-only guidance, no soundtrack), not for today's defaults.
_V1_DEFAULTS = dict(stg_scale=0.0, guidance_rescale=0.0, modality_scale=1.0, audio=False)


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


# ltx-pipelines' default negative prompt (utils/constants.py DEFAULT_NEGATIVE_PROMPT), used by its CLI for the Full
# (dev) pipelines' CFG; our default too (distilled runs have no CFG and ignore it).
OFFICIAL_NEGATIVE_PROMPT = (
    'blurry, out of focus, overexposed, underexposed, low contrast, washed out colors, excessive noise, '
    'grainy texture, poor lighting, flickering, motion blur, distorted proportions, unnatural skin tones, '
    'deformed facial features, asymmetrical face, missing facial features, extra limbs, disfigured hands, '
    'wrong hand count, artifacts around text, inconsistent perspective, camera shake, incorrect depth of '
    'field, background too sharp, background clutter, distracting reflections, harsh shadows, '
    'inconsistent lighting direction, color banding, cartoonish rendering, 3D CGI look, unrealistic '
    'materials, uncanny valley effect, incorrect ethnicity, wrong gender, exaggerated expressions, wrong '
    'gaze direction, mismatched lip sync, silent or muted audio, distorted voice, robotic voice, echo, '
    'background noise, off-sync audio, incorrect dialogue, added dialogue, repetitive speech, jittery '
    'movement, awkward pauses, incorrect timing, unnatural transitions, inconsistent framing, tilted '
    'camera, flat lighting, inconsistent tone, cinematic oversaturation, stylized filters, or AI '
    'artifacts.'
)


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
class KeyframeInput:
    """An image the video must show at pixel frame `frame` (ltx-pipelines' image conditioning): frame 0 replaces the
    first latent frame, any other frame is appended as keyframe tokens at that time (SPEC.md 2)."""

    path: str
    frame: int = 0
    strength: float = 1.0


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
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    model: str = "tiny"
    width: int = 768
    height: int = 512
    frames: int = 121
    fps: float = 24.0
    seed: int = 0
    schedule: Schedule = Schedule.DISTILLED
    steps: int = 30  # Full (dev) schedule only; distilled runs use their 8 fixed sigmas
    # Full (dev) guidance, ltx-pipelines' LTX_2_3_PARAMS (distilled runs: one model pass, no guidance)
    guidance_scale: float = 3.0  # video CFG
    stg_scale: float = 1.0  # video STG (self-attention skipped in stg_blocks)
    stg_blocks: list[int] = field(default_factory=lambda: [28])  # of the official 48; mapped to the model's depth
    guidance_rescale: float = 0.7
    modality_scale: float = 3.0  # audio<->video isolation guidance
    audio_guidance_scale: float = 7.0
    audio_stg_scale: float = 1.0
    audio_guidance_rescale: float = 0.7
    audio_modality_scale: float = 3.0
    stages: int = 1  # 1: one stage at full size (community IC-LoRAs); 2: ltx-pipelines' ICLoraPipeline recipe
    stage2_keep_ic: bool = False  # two-stage: keep the LoRAs and references in stage 2 too (off in ICLoraPipeline)
    audio: bool = True  # generate the soundtrack jointly (LTX-2.3 is an audio+video model) and write it as AAC
    tier: MemoryTier = MemoryTier.AUTO
    # >1: one video over that many GPUs of one host (context parallel, pipelines.parallel); None: the studio's
    # "GPUs per generation" setting decides (1 outside the studio)
    gpus: int | None = None
    image: str | None = None  # first-frame image (a keyframe at frame 0)
    image_strength: float = 1.0
    keyframes: list[KeyframeInput] = field(default_factory=list)  # images at any frame
    image_crf: int = 33  # H.264 CRF the conditioning images are re-compressed at (ltx-pipelines DEFAULT_IMAGE_CRF)
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
        if self.gpus is not None and (not isinstance(self.gpus, int) or not (1 <= self.gpus <= 64)):
            raise UserError(f"gpus={self.gpus} must be a whole number of GPUs of one host (1 to 64)")
        if self.stages == 2 and (self.width % 64 or self.height % 64):
            raise UserError(f"two-stage runs need width and height multiples of 64 (got {self.width}x{self.height})")
        if self.schedule == Schedule.FULL and not (1 <= self.steps <= 200):
            raise UserError(f"steps={self.steps} must be between 1 and 200")
        for name in ("guidance_scale", "audio_guidance_scale", "stg_scale", "audio_stg_scale", "modality_scale",
                     "audio_modality_scale"):
            if not (0.0 <= float(getattr(self, name)) <= 20.0):
                raise UserError(f"{name}={getattr(self, name)} must be between 0 and 20")
        for name in ("guidance_rescale", "audio_guidance_rescale"):
            if not (0.0 <= float(getattr(self, name)) <= 1.0):
                raise UserError(f"{name}={getattr(self, name)} must be between 0 and 1")
        if not isinstance(self.stg_blocks, (list, tuple)) or not all(
                isinstance(b, int) and 0 <= b < 48 for b in self.stg_blocks):
            raise UserError(f"stg_blocks={self.stg_blocks} must be block numbers 0..47 (of the official 48-block "
                            "model; a smaller model uses the block at the same relative depth)")
        if not isinstance(self.image_crf, int) or not (0 <= self.image_crf <= 51):
            raise UserError(f"image_crf={self.image_crf} must be an integer 0..51 (0 = no re-compression)")
        for i, k in enumerate(self.keyframes):
            if not isinstance(k.frame, int) or not (0 <= k.frame < self.frames):
                raise UserError(f"keyframes[{i}].frame={k.frame} must be a frame of the output (0..{self.frames - 1})")
            if not (0.0 <= float(k.strength) <= 1.0):
                raise UserError(f"keyframes[{i}].strength={k.strength} must be between 0 and 1")
            if self.image and k.frame == 0:
                raise UserError(f"keyframes[{i}] is at frame 0, where the first-frame image already is")
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

    def video_guidance(self):
        from pipelines.sampler.guidance import GuidanceParams

        return GuidanceParams(cfg=float(self.guidance_scale), stg=float(self.stg_scale),
                              stg_blocks=tuple(self.stg_blocks), rescale=float(self.guidance_rescale),
                              modality=float(self.modality_scale))

    def audio_guidance(self):
        from pipelines.sampler.guidance import GuidanceParams

        return GuidanceParams(cfg=float(self.audio_guidance_scale), stg=float(self.audio_stg_scale),
                              stg_blocks=tuple(self.stg_blocks), rescale=float(self.audio_guidance_rescale),
                              modality=float(self.audio_modality_scale))

    def all_keyframes(self) -> list[KeyframeInput]:
        """The first-frame image and the keyframes, as ltx-pipelines' image list (first frame first)."""
        first = [KeyframeInput(self.image, 0, float(self.image_strength))] if self.image else []
        return first + list(self.keyframes)

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
        if data.get("version") == 1:  # a sidecar written by version 1 (requests from clients carry no version)
            for k, v in _V1_DEFAULTS.items():
                data.setdefault(k, v)
            data.setdefault("steps", 8 if data.get("schedule", "distilled") == "distilled" else 30)
            data.setdefault("guidance_scale", 1.0)
            data["version"] = REQUEST_VERSION
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
            data["keyframes"] = [KeyframeInput(path=k["path"], frame=int(k.get("frame", 0)),
                                               strength=float(k.get("strength", 1.0)))
                                 for k in data.get("keyframes") or []]
            if "stg_blocks" in data and data["stg_blocks"] is not None:
                data["stg_blocks"] = [int(b) for b in data["stg_blocks"]]
            for k in ("width", "height", "frames", "seed", "steps", "stages", "image_crf", "gpus"):
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
