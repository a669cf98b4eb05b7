"""Which models exist on this machine: discovered from --models-dir / ICLORA_MODELS_DIR, with a status per
component naming the exact files expected, and the catalogue of Lightricks' official LTX-2.3 files (what each is
for, where it comes from, roughly how big). No torch import here (the UI's Models tab reads it at start).

Layouts understood (SPEC.md 5 and 11; file names as in Lightricks' MODELS-LTX-2.3.md):
  <models_dir>/ltx-2.3-22b-distilled-1.1.safetensors   official single-file checkpoints: transformer, video VAE,
  <models_dir>/ltx-2.3-22b-distilled.safetensors         audio VAE, vocoder and text connectors in one file, the
  <models_dir>/ltx-2.3-22b-dev.safetensors               config in its metadata (no config folder). The 1.1
  <models_dir>/ltx-2.3-22b-{dev,distilled}-fp8.safetensors distilled file is preferred; fp8 variants are used when
                                                          they are the only ones present.
  <models_dir>/gemma-3-12b-it/                          Gemma 3 12B text encoder (config.json, *.safetensors,
                                                          tokenizer files); the only separate folder
  <models_dir>/ltx-2.3-spatial-upscaler-x2-1.1.safetensors  latent upsampler for two-stage runs (or -1.0)
  <models_dir>/<name>/model_index.json                  a diffusers-format LTX-2.3 folder (any name)
  <models_dir>/loras/*.safetensors                      IC-LoRAs and style LoRAs
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.models.tiny import TINY_MODEL_NOTICE

TINY = "tiny"
LORA_DIR = "loras"
GB = 1000**3


@dataclass(frozen=True)
class WeightFile:
    """One downloadable official file (or, for the text encoder, a whole repository into one folder)."""

    key: str  # short id, used by `models download --file KEY`
    filename: str  # name in the models folder (file, or folder for the text encoder)
    repo: str  # Hugging Face repository
    kind: str  # checkpoint | spatial_upscaler | temporal_upscaler | lora | text_encoder
    approx_bytes: int  # for display; a download plan asks the Hub for exact sizes
    purpose: str
    gated: bool = False  # the repository needs an accepted licence and a token
    folder: bool = False  # a repository snapshot into models_dir/filename/

    def to_dict(self) -> dict:
        return {"key": self.key, "file": self.filename, "repo": self.repo, "kind": self.kind,
                "approx_gb": round(self.approx_bytes / GB, 1), "purpose": self.purpose, "gated": self.gated}


LTX_REPO = "Lightricks/LTX-2.3"
LTX_FP8_REPO = "Lightricks/LTX-2.3-fp8"
GEMMA_REPO = "google/gemma-3-12b-it-qat-q4_0-unquantized"

CATALOG: tuple[WeightFile, ...] = (
    WeightFile("distilled-1.1", "ltx-2.3-22b-distilled-1.1.safetensors", LTX_REPO, "checkpoint", 46_149_345_334,
               "distilled model 1.1 (recommended): 8 steps at CFG 1, the model Lightricks' IC-LoRA pipeline runs; "
               "transformer, video + audio VAE, vocoder and text connectors in one file"),
    WeightFile("distilled-1.0", "ltx-2.3-22b-distilled.safetensors", LTX_REPO, "checkpoint", 46_149_345_038,
               "distilled model 1.0 (superseded by 1.1 on 2026-04-23; still loads)"),
    WeightFile("dev", "ltx-2.3-22b-dev.safetensors", LTX_REPO, "checkpoint", 46_149_344_974,
               "full (dev) model: 30 steps with CFG 3 + STG; the base for training IC-LoRAs; with the distilled LoRA "
               "it runs the 8-step schedule"),
    WeightFile("distilled-fp8", "ltx-2.3-22b-distilled-fp8.safetensors", LTX_FP8_REPO, "checkpoint", 29_531_884_062,
               "distilled model in fp8 (smaller download; dequantised on load, the memory tier decides storage)"),
    WeightFile("dev-fp8", "ltx-2.3-22b-dev-fp8.safetensors", LTX_FP8_REPO, "checkpoint", 29_100_000_000,
               "full (dev) model in fp8 (smaller download; dequantised on load)"),
    WeightFile("spatial-upscaler-x2-1.1", "ltx-2.3-spatial-upscaler-x2-1.1.safetensors", LTX_REPO, "spatial_upscaler",
               995_000_000, "2x latent upsampler for two-stage runs (half-resolution stage 1, then refine)"),
    WeightFile("spatial-upscaler-x2-1.0", "ltx-2.3-spatial-upscaler-x2-1.0.safetensors", LTX_REPO, "spatial_upscaler",
               995_000_000, "2x latent upsampler 1.0 (superseded by 1.1; still loads)"),
    WeightFile("spatial-upscaler-x1.5-1.0", "ltx-2.3-spatial-upscaler-x1.5-1.0.safetensors", LTX_REPO,
               "spatial_upscaler", 1_070_000_000, "1.5x latent upsampler (not used by the studio's two-stage runs)"),
    WeightFile("temporal-upscaler-x2-1.0", "ltx-2.3-temporal-upscaler-x2-1.0.safetensors", LTX_REPO,
               "temporal_upscaler", 262_000_000, "2x temporal latent upsampler (not used by the studio yet)"),
    WeightFile("distilled-lora-1.1", "ltx-2.3-22b-distilled-lora-384-1.1.safetensors", LTX_REPO, "lora",
               7_605_507_256, "distilled LoRA for the dev model (Lightricks' ComfyUI IC-LoRA workflows: dev + this "
               "LoRA at 0.5, 8 distilled steps); goes in loras/"),
    WeightFile("distilled-lora-1.0", "ltx-2.3-22b-distilled-lora-384.safetensors", LTX_REPO, "lora", 7_605_507_256,
               "distilled LoRA 1.0 (superseded by 1.1); goes in loras/"),
    WeightFile("gemma", "gemma-3-12b-it", GEMMA_REPO, "text_encoder", 24_400_000_000,
               "Gemma 3 12B text encoder (the QAT unquantised release Lightricks points to); gated on the Hub: "
               "accept Google's licence there and use a token", gated=True, folder=True),
)
BY_KEY = {w.key: w for w in CATALOG}

# Download sets for `python -m pipelines models download --variant ...` and the Models tab.
VARIANTS: dict[str, tuple[str, ...]] = {
    "distilled": ("distilled-1.1", "spatial-upscaler-x2-1.1", "gemma"),
    "dev": ("dev", "distilled-lora-1.1", "spatial-upscaler-x2-1.1", "gemma"),
    "fp8": ("distilled-fp8", "spatial-upscaler-x2-1.1", "gemma"),
}

# Model name -> (default schedule, checkpoint keys in order of preference).
OFFICIAL_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ltx-2.3-distilled": ("distilled", ("distilled-1.1", "distilled-1.0", "distilled-fp8")),
    "ltx-2.3-dev": ("full", ("dev", "dev-fp8")),
}
UPSAMPLER_KEYS = ("spatial-upscaler-x2-1.1", "spatial-upscaler-x2-1.0")
# Folder names the Gemma 3 12B text encoder is found under (ours first, then the names Lightricks' docs use).
GEMMA_DIRS = ("gemma-3-12b-it", "gemma-3-12b-it-qat-q4_0-unquantized", "gemma-3-12b")
GEMMA_DIR = GEMMA_DIRS[0]
UPSAMPLER_FILE = BY_KEY[UPSAMPLER_KEYS[0]].filename


def destination(models_dir: str | Path, w: WeightFile) -> Path:
    """Where a catalogue entry lives in the models folder (LoRAs in loras/)."""
    base = Path(models_dir)
    return base / LORA_DIR / w.filename if w.kind == "lora" else base / w.filename


class ModelKind(str, enum.Enum):
    TINY = "tiny"
    DIFFUSERS = "diffusers_folder"
    SINGLE_FILE = "single_file"


@dataclass
class Component:
    name: str
    expected: str  # the exact file / folder name expected
    path: str | None  # where it was found, or None
    alternatives: tuple[str, ...] = ()  # other accepted names
    purpose: str = ""

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

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind.value, "path": self.path, "ready": self.ready,
                "default_schedule": self.default_schedule, "notice": self.notice,
                "components": [{"name": c.name, "expected": c.expected, "found": c.found, "path": c.path,
                                "alternatives": list(c.alternatives), "purpose": c.purpose}
                               for c in self.components]}


def tiny_spec() -> ModelSpec:
    return ModelSpec(name=TINY, kind=ModelKind.TINY, path=None, default_schedule="distilled",
                     components=[Component("built-in", "(built from code, seed 0)", "<memory>")], notice=TINY_MODEL_NOTICE)


def _find(base: Path | None, name: str) -> str | None:
    if base is None:
        return None
    p = base / name
    return str(p) if p.exists() else None


def _first(base: Path | None, keys: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(path, key) of the first catalogue entry present, in order of preference."""
    for key in keys:
        p = _find(base, BY_KEY[key].filename)
        if p:
            return p, key
    return None, None


def find_gemma(base: Path | None) -> str | None:
    if base is None:
        return None
    for name in GEMMA_DIRS:
        if (base / name / "config.json").is_file():
            return str(base / name)
    return None


def find_upsampler(base: Path | None) -> str | None:
    return _first(base, UPSAMPLER_KEYS)[0]


def _text_encoder_component(base: Path | None) -> Component:
    return Component("text_encoder", f"{GEMMA_DIR}/ (config.json, model*.safetensors, tokenizer files)",
                     find_gemma(base), alternatives=tuple(f"{n}/" for n in GEMMA_DIRS[1:]),
                     purpose=BY_KEY["gemma"].purpose)


def _upsampler_component(base: Path | None, fallback: str | None = None) -> Component:
    return Component("upsampler", UPSAMPLER_FILE, find_upsampler(base) or fallback,
                     alternatives=tuple(BY_KEY[k].filename for k in UPSAMPLER_KEYS[1:]),
                     purpose=BY_KEY[UPSAMPLER_KEYS[0]].purpose + " (optional)")


def discover(models_dir: str | Path | None) -> list[ModelSpec]:
    """All model specs: the tiny model first, then whatever the models folder holds (ready or not)."""
    specs = [tiny_spec()]
    # Without a models folder the official LTX-2.3 entries are still listed, every file missing, so the Models
    # tab and `python -m pipelines models` say exactly which files to get and where they go.
    base = Path(models_dir) if models_dir and Path(models_dir).is_dir() else None
    folders = sorted(p.parent for p in base.glob("*/model_index.json")) if base else []
    for folder in folders:
        comps = [Component(sub, f"{folder.name}/{sub}/", _find(folder, sub))
                 for sub in ("transformer", "vae", "text_encoder", "tokenizer", "connectors")]
        comps.append(_upsampler_component(base, _find(folder, "latent_upsampler")))
        sched = "distilled" if "distill" in folder.name.lower() else "full"
        specs.append(ModelSpec(folder.name, ModelKind.DIFFUSERS, str(folder), sched, comps))
    for name, (sched, keys) in OFFICIAL_MODELS.items():
        ckpt, key = _first(base, keys)
        primary = BY_KEY[keys[0]]
        comps = [Component("checkpoint", primary.filename, ckpt,
                           alternatives=tuple(BY_KEY[k].filename for k in keys[1:]),
                           purpose=BY_KEY[key or keys[0]].purpose),
                 _text_encoder_component(base), _upsampler_component(base)]
        specs.append(ModelSpec(name, ModelKind.SINGLE_FILE, ckpt, sched, comps))
    return specs


def get_spec(name: str, models_dir: str | Path | None) -> ModelSpec:
    from pipelines.errors import UserError

    specs = discover(models_dir)
    for s in specs:
        if s.name == name:
            if not s.ready:
                missing = [f"{c.name}: {c.expected}" + (f" (or {', '.join(c.alternatives)})" if c.alternatives else "")
                           for c in s.components if not c.found and c.name != "upsampler"]
                where = f"in {models_dir}" if models_dir else \
                    "(no models folder: pass --models-dir or set ICLORA_MODELS_DIR to a folder holding them)"
                raise UserError(f"model {name} is missing files {where}: " + "; ".join(missing)
                                + "; get them with `python -m pipelines models download` or the Models tab")
            return s
    names = ", ".join(s.name for s in specs)
    where = f" in {models_dir}" if models_dir else " (no --models-dir given)"
    raise UserError(f"unknown model {name!r}{where}; available: {names}")


def catalog_status(models_dir: str | Path | None) -> list[dict]:
    """Every official file with what it is for and whether (and where) it is in the models folder."""
    base = Path(models_dir) if models_dir and Path(models_dir).is_dir() else None
    out = []
    for w in CATALOG:
        if w.kind == "text_encoder":
            path = find_gemma(base)
        else:
            p = destination(base, w) if base else None
            path = str(p) if p is not None and p.exists() else None
        out.append(w.to_dict() | {"found": path is not None, "path": path})
    return out


def list_loras(models_dir: str | Path | None) -> list[str]:
    if not models_dir:
        return []
    return sorted(str(p) for p in (Path(models_dir) / LORA_DIR).glob("*.safetensors"))
