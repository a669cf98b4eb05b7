"""Where things live: models, outputs, optional weights. Read from arguments first, then environment.

Env vars:
  ICLORA_MODELS_DIR   folder with LTX-2.3 checkpoints, Gemma 3, IC-LoRAs and preprocessor weights
  ICLORA_OUTPUTS_DIR  where generated files, sidecars and job data go (default ./outputs)
  ICLORA_CACHE_DIR    files the studio builds from code and can always rebuild (the tiny model's demo IC-LoRAs);
                      default $XDG_CACHE_HOME/iclora-studio or ~/.cache/iclora-studio
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR_ENV = "ICLORA_MODELS_DIR"
OUTPUTS_DIR_ENV = "ICLORA_OUTPUTS_DIR"
CACHE_DIR_ENV = "ICLORA_CACHE_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
PRESETS_DIR = PROJECT_ROOT / "presets"


@dataclass(frozen=True)
class Paths:
    models_dir: Path | None
    outputs_dir: Path

    @classmethod
    def resolve(cls, models_dir: str | os.PathLike | None = None, outputs_dir: str | os.PathLike | None = None) -> "Paths":
        m = models_dir or os.environ.get(MODELS_DIR_ENV) or None
        o = outputs_dir or os.environ.get(OUTPUTS_DIR_ENV) or (Path.cwd() / "outputs")
        return cls(models_dir=Path(m).expanduser().resolve() if m else None, outputs_dir=Path(o).expanduser().resolve())


def cache_dir() -> Path:
    """Where rebuildable files go (shared, read-only data for every user; never inside the outputs folder, whose
    files belong to their owners)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return (Path(base) / "iclora-studio").expanduser().resolve()
