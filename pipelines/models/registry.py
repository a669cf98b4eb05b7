"""Which models exist on this machine: discovered from --models-dir / ICLORA_MODELS_DIR, with a status per
component naming the exact files expected. No torch import here (the UI's Models tab reads it at start).

Layouts understood (SPEC.md 5):
  <models_dir>/<name>/model_index.json                      a diffusers-format LTX-2.3 folder (any name)
  <models_dir>/ltx-2.3-22b-dev.safetensors                  official single-file checkpoints (dev / distilled),
  <models_dir>/ltx-2.3-22b-distilled.safetensors              loaded with a diffusers config folder and Gemma 3:
  <models_dir>/ltx-2.3-config/                               diffusers-format folder holding the configs only
                                                              (model_index.json + */config.json), or any full
                                                              diffusers folder from above
  <models_dir>/gemma-3-12b-it/                               Gemma 3 text encoder (config.json, *.safetensors,
                                                              tokenizer files)
  <models_dir>/ltx-2.3-spatial-upscaler-x2-1.0.safetensors  latent upsampler for two-stage runs (optional)
  <models_dir>/loras/*.safetensors                           IC-LoRAs and style LoRAs
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.models.tiny import TINY_MODEL_NOTICE

TINY = "tiny"
OFFICIAL_FILES = {
    "ltx-2.3-dev": ("ltx-2.3-22b-dev.safetensors", "full"),
    "ltx-2.3-distilled": ("ltx-2.3-22b-distilled.safetensors", "distilled"),
}
CONFIG_DIR = "ltx-2.3-config"
GEMMA_DIR = "gemma-3-12b-it"
UPSAMPLER_FILE = "ltx-2.3-spatial-upscaler-x2-1.0.safetensors"
LORA_DIR = "loras"


class ModelKind(str, enum.Enum):
    TINY = "tiny"
    DIFFUSERS = "diffusers_folder"
    SINGLE_FILE = "single_file"


@dataclass
class Component:
    name: str
    expected: str  # the exact file / folder name expected
    path: str | None  # where it was found, or None

    @property
    def found(self) -> bool:
        return self.path is not None


@dataclass
class ModelSpec:
    name: str
    kind: ModelKind
    path: str | None
    default_schedule: str  # "distilled" | "full"
    components: list[Component] = field(default_factory=list)
    notice: str = ""

    @property
    def ready(self) -> bool:
        return all(c.found for c in self.components if c.name != "upsampler")

    @property
    def is_tiny(self) -> bool:
        return self.kind == ModelKind.TINY

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind.value, "path": self.path, "ready": self.ready,
                "default_schedule": self.default_schedule, "notice": self.notice,
                "components": [{"name": c.name, "expected": c.expected, "found": c.found, "path": c.path}
                               for c in self.components]}


def tiny_spec() -> ModelSpec:
    return ModelSpec(name=TINY, kind=ModelKind.TINY, path=None, default_schedule="distilled",
                     components=[Component("built-in", "(built from code, seed 0)", "<memory>")], notice=TINY_MODEL_NOTICE)


def _find(base: Path, name: str) -> str | None:
    p = base / name
    return str(p) if p.exists() else None


def _config_folder(models_dir: Path, diffusers_folders: list[Path]) -> str | None:
    cfg = models_dir / CONFIG_DIR
    if (cfg / "model_index.json").is_file():
        return str(cfg)
    return str(diffusers_folders[0]) if diffusers_folders else None


def discover(models_dir: str | Path | None) -> list[ModelSpec]:
    """All model specs: the tiny model first, then whatever the models folder holds (ready or not)."""
    specs = [tiny_spec()]
    # Without a models folder the official LTX-2.3 entries are still listed, every file missing, so the Models
    # tab and `python -m pipelines models` say exactly which files to get and where they go.
    base = Path(models_dir) if models_dir and Path(models_dir).is_dir() else None
    folders = sorted(p.parent for p in base.glob("*/model_index.json")) if base else []
    for folder in folders:
        if folder.name == CONFIG_DIR:
            continue
        comps = [Component(sub, f"{folder.name}/{sub}/", _find(folder, sub))
                 for sub in ("transformer", "vae", "text_encoder", "tokenizer", "connectors")]
        comps.append(Component("upsampler", UPSAMPLER_FILE, _find(base, UPSAMPLER_FILE) or _find(folder, "latent_upsampler")))
        sched = "distilled" if "distill" in folder.name.lower() else "full"
        specs.append(ModelSpec(folder.name, ModelKind.DIFFUSERS, str(folder), sched, comps))
    cfg = _config_folder(base, [f for f in folders if f.name != CONFIG_DIR]) if base else None
    gemma = str(base / GEMMA_DIR) if base and (base / GEMMA_DIR / "config.json").is_file() else None
    for name, (fname, sched) in OFFICIAL_FILES.items():
        ckpt = _find(base, fname) if base else None
        comps = [Component("checkpoint", fname, ckpt),
                 Component("config", f"{CONFIG_DIR}/ (diffusers configs: model_index.json, */config.json)", cfg),
                 Component("text_encoder", f"{GEMMA_DIR}/ (config.json, model*.safetensors, tokenizer.model)", gemma),
                 Component("upsampler", UPSAMPLER_FILE, _find(base, UPSAMPLER_FILE) if base else None)]
        specs.append(ModelSpec(name, ModelKind.SINGLE_FILE, ckpt, sched, comps))
    return specs


def get_spec(name: str, models_dir: str | Path | None) -> ModelSpec:
    from pipelines.errors import UserError

    specs = discover(models_dir)
    for s in specs:
        if s.name == name:
            if not s.ready:
                missing = [f"{c.name}: {c.expected}" for c in s.components if not c.found and c.name != "upsampler"]
                where = f"in {models_dir}" if models_dir else \
                    "(no models folder: pass --models-dir or set ICLORA_MODELS_DIR to a folder holding them)"
                raise UserError(f"model {name} is missing files {where}: " + "; ".join(missing))
            return s
    names = ", ".join(s.name for s in specs)
    where = f" in {models_dir}" if models_dir else " (no --models-dir given)"
    raise UserError(f"unknown model {name!r}{where}; available: {names}")


def list_loras(models_dir: str | Path | None) -> list[str]:
    if not models_dir:
        return []
    return sorted(str(p) for p in (Path(models_dir) / LORA_DIR).glob("*.safetensors"))
