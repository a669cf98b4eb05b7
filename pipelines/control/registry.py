"""Registry of control preprocessors: what each needs and whether it is ready here.

Every backend declares its Python packages, its weight files (names and rough sizes), the env var and the
models-dir subfolder it looks in, and where the files come from. ``status()`` reports ready / missing package /
missing weights without importing anything heavy; ``require()`` returns the weights folder or raises a
UserError that lists every path searched and how to get the files. Nothing is ever faked: no weights, no
control signal.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.control.types import ControlKind, DepthModelSize, PoseBackend
from pipelines.errors import UserError

READY = "ready"
MISSING_PACKAGE = "missing package"
MISSING_WEIGHTS = "missing weights"


@dataclass(frozen=True)
class WeightFile:
    name: str
    approx_mb: float
    alternatives: tuple[str, ...] = ()   # other accepted names for the same file (e.g. pytorch_model.bin)

    def present_in(self, folder: Path) -> bool:
        return any((folder / n).is_file() for n in (self.name, *self.alternatives))


@dataclass(frozen=True)
class PreprocessorSpec:
    kind: ControlKind
    backend: str
    title: str
    packages: tuple[str, ...] = ()      # import names
    pip: tuple[str, ...] = ()           # what to pip install for them
    weights: tuple[WeightFile, ...] = ()
    env_var: str | None = None
    subfolder: str | None = None
    source: str | None = None           # Hugging Face repo id, as text (nothing is downloaded at run time)
    licence: str | None = None
    notes: tuple[str, ...] = field(default=())

    # -- where the weights may be -------------------------------------------------------------------------
    def search_paths(self, models_dir: str | os.PathLike | None = None) -> list[Path]:
        """Folders searched, in order: $ENV_VAR, then <models_dir>/<subfolder> (models_dir defaults to
        $ICLORA_MODELS_DIR)."""
        if not self.weights:
            return []
        paths: list[Path] = []
        if self.env_var and os.environ.get(self.env_var):
            paths.append(Path(os.environ[self.env_var]).expanduser())
        root = resolve_models_dir(models_dir)
        if root is not None and self.subfolder:
            paths.append(root / self.subfolder)
        return paths

    def find_weights(self, models_dir: str | os.PathLike | None = None) -> Path | None:
        for folder in self.search_paths(models_dir):
            if folder.is_dir() and all(w.present_in(folder) for w in self.weights):
                return folder
        return None

    def missing_packages(self) -> list[str]:
        return [p for p in self.packages if importlib.util.find_spec(p) is None]

    def how_to_get(self, models_dir: str | os.PathLike | None = None) -> str:
        if not self.weights:
            return ""
        root = resolve_models_dir(models_dir)
        dest = (root / self.subfolder) if (root is not None and self.subfolder) else Path("<models_dir>") / (self.subfolder or "")
        names = " ".join(w.name for w in self.weights)
        text = (f"on a machine with internet: `hf download {self.source} {names} --local-dir {dest}` "
                f"(or download those files from https://huggingface.co/{self.source} into {dest})")
        if self.env_var:
            text += f", or point {self.env_var} at a folder holding them"
        return text

    def status(self, models_dir: str | os.PathLike | None = None) -> dict:
        missing_pkgs = self.missing_packages()
        found = self.find_weights(models_dir)
        if missing_pkgs:
            state = MISSING_PACKAGE
        elif self.weights and found is None:
            state = MISSING_WEIGHTS
        else:
            state = READY
        searched = self.search_paths(models_dir)
        out = {
            "kind": self.kind.value,
            "backend": self.backend,
            "title": self.title,
            "status": state,
            "ready": state == READY,
            "packages": list(self.packages),
            "missing_packages": missing_pkgs,
            "pip": list(self.pip),
            "weights": [{"name": w.name, "approx_mb": w.approx_mb} for w in self.weights],
            "env_var": self.env_var,
            "subfolder": self.subfolder,
            "searched": [str(p) for p in searched],
            "found": str(found) if found else None,
            "source": self.source,
            "licence": self.licence,
            "how_to_get": self.how_to_get(models_dir),
            "notes": list(self.notes),
        }
        if self.weights and not searched:
            out["notes"] = out["notes"] + [f"no models dir: pass --models-dir, set ICLORA_MODELS_DIR or {self.env_var}"]
        return out

    def require(self, models_dir: str | os.PathLike | None = None) -> Path | None:
        """Check packages and weights; return the weights folder (None when it needs none) or raise."""
        missing_pkgs = self.missing_packages()
        if missing_pkgs:
            raise UserError(f"{self.title} needs the Python package(s) {', '.join(missing_pkgs)}: "
                            f"pip install {' '.join(self.pip or missing_pkgs)}")
        if not self.weights:
            return None
        found = self.find_weights(models_dir)
        if found is not None:
            return found
        searched = self.search_paths(models_dir)
        lines = []
        for folder in searched:
            if not folder.is_dir():
                lines.append(f"{folder} (no such folder)")
            else:
                missing = [w.name for w in self.weights if not w.present_in(folder)]
                lines.append(f"{folder} (missing {', '.join(missing)})")
        where = "; ".join(lines) if lines else (f"nowhere: no models dir given (pass --models-dir, set ICLORA_MODELS_DIR, "
                                                f"or set {self.env_var})")
        files = ", ".join(f"{w.name} (~{w.approx_mb:g} MB)" for w in self.weights)
        raise UserError(f"{self.title} weights not found. Needs {files}. Searched: {where}. "
                        f"To get them: {self.how_to_get(models_dir)}.")


def resolve_models_dir(models_dir: str | os.PathLike | None) -> Path | None:
    from pipelines.config import Paths

    return Paths.resolve(models_dir=models_dir).models_dir


_DEPTH_SIZES = {
    DepthModelSize.SMALL: ("Small", 99, "Apache-2.0"),
    DepthModelSize.BASE: ("Base", 390, "CC-BY-NC-4.0 (non-commercial)"),
    DepthModelSize.LARGE: ("Large", 1340, "CC-BY-NC-4.0 (non-commercial)"),
}


def depth_spec(size: DepthModelSize = DepthModelSize.SMALL) -> PreprocessorSpec:
    name, mb, licence = _DEPTH_SIZES[DepthModelSize(size)]
    return PreprocessorSpec(
        kind=ControlKind.DEPTH,
        backend=f"depth-anything-v2-{name.lower()}",
        title=f"Depth-Anything-V2-{name} (transformers)",
        packages=("torch", "transformers"),
        pip=("torch", "transformers"),
        weights=(WeightFile("config.json", 0.01),
                 WeightFile("model.safetensors", mb, alternatives=("pytorch_model.bin",)),
                 WeightFile("preprocessor_config.json", 0.01)),
        env_var="ICLORA_DEPTH_DIR",
        subfolder=f"depth-anything-v2-{name.lower()}",
        source=f"depth-anything/Depth-Anything-V2-{name}-hf",
        licence=licence,
        notes=("gray depth normalised over the whole clip, near = white (invert option)",),
    )


CANNY_SPEC = PreprocessorSpec(
    kind=ControlKind.CANNY, backend="opencv", title="Canny edges (OpenCV)", packages=("cv2",),
    pip=("opencv-python-headless",), notes=("thresholds 92/200 as in the Union IC-LoRA training data",))

DWPOSE_SPEC = PreprocessorSpec(
    kind=ControlKind.POSE,
    backend=PoseBackend.DWPOSE.value,
    title="DWPose (onnxruntime)",
    packages=("onnxruntime",),
    pip=("onnxruntime",),
    weights=(WeightFile("yolox_l.onnx", 217), WeightFile("dw-ll_ucoco_384.onnx", 134)),
    env_var="ICLORA_POSE_DIR",
    subfolder="dwpose",
    source="yzd-v/DWPose",
    licence="Apache-2.0",
    notes=("YOLOX-L person detector + DWPose-L wholebody keypoints, rendered as an OpenPose 18-point skeleton",),
)

CONTROLNET_AUX_OPENPOSE_SPEC = PreprocessorSpec(
    kind=ControlKind.POSE,
    backend=PoseBackend.CONTROLNET_AUX.value,
    title="OpenPose (controlnet-aux)",
    packages=("controlnet_aux",),
    pip=("controlnet-aux",),
    weights=(WeightFile("body_pose_model.pth", 200), WeightFile("hand_pose_model.pth", 141), WeightFile("facenet.pth", 154)),
    env_var="ICLORA_ANNOTATORS_DIR",
    subfolder="annotators",
    source="lllyasviel/Annotators",
    licence="see lllyasviel/Annotators",
    notes=("optional second backend; controlnet-aux needs torchvision, which has no CPU wheel on PyPI "
           "(SPEC.md 10), so it is not installed by default",),
)

PASSTHROUGH_SPEC = PreprocessorSpec(
    kind=ControlKind.PASSTHROUGH, backend="video", title="Your own control video (passthrough)",
    notes=("a Blender depth pass, a LiDAR render, ...: conformed to the target, optional invert/gray",))


def backends(kind: ControlKind | str) -> list[PreprocessorSpec]:
    """All backends for a kind, the default first."""
    kind = ControlKind.parse(kind)
    if kind is ControlKind.CANNY:
        return [CANNY_SPEC]
    if kind is ControlKind.DEPTH:
        return [depth_spec(s) for s in DepthModelSize]
    if kind is ControlKind.POSE:
        return [DWPOSE_SPEC, CONTROLNET_AUX_OPENPOSE_SPEC]
    return [PASSTHROUGH_SPEC]


def spec_for(kind: ControlKind | str, options=None) -> PreprocessorSpec:
    """The backend `options` select for `kind` (the default one without options)."""
    kind = ControlKind.parse(kind)
    if kind is ControlKind.DEPTH and options is not None:
        return depth_spec(options.model)
    if kind is ControlKind.POSE and options is not None and PoseBackend(options.backend) is PoseBackend.CONTROLNET_AUX:
        return CONTROLNET_AUX_OPENPOSE_SPEC
    return backends(kind)[0]


def registry_status(models_dir: str | os.PathLike | None = None) -> list[dict]:
    """One entry per control kind (its default backend), with the other backends under "alternatives"."""
    out = []
    for kind in ControlKind:
        first, *rest = backends(kind)
        entry = first.status(models_dir)
        entry["alternatives"] = [s.status(models_dir) for s in rest]
        out.append(entry)
    return out
