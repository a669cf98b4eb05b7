"""Control preprocessors for the Union IC-LoRA: canny, depth, pose, and the user's own control video.

    frames, report = run_control("canny", "clip.mp4", ConformTarget(width=768, height=512, frames=121))
    registry_status(models_dir)   # ready / missing package / missing weights, per kind, with paths searched

Heavy backends (torch + transformers for depth, onnxruntime for pose) are imported only when run.
"""
from pipelines.control.registry import (MISSING_PACKAGE, MISSING_WEIGHTS, READY, PreprocessorSpec, WeightFile,
                                        backends, registry_status, spec_for)
from pipelines.control.run import run_control, save_control
from pipelines.control.types import (CannyOptions, ControlKind, ControlReport, DepthModelSize, DepthNormalize,
                                     DepthOptions, PassthroughOptions, PoseBackend, PoseOptions, options_from_dict,
                                     options_to_dict)

__all__ = [
    "CannyOptions", "ControlKind", "ControlReport", "DepthModelSize", "DepthNormalize", "DepthOptions",
    "MISSING_PACKAGE", "MISSING_WEIGHTS", "PassthroughOptions", "PoseBackend", "PoseOptions", "PreprocessorSpec",
    "READY", "WeightFile", "backends", "options_from_dict", "options_to_dict", "registry_status", "run_control",
    "save_control", "spec_for",
]
