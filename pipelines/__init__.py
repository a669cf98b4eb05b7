"""Everything that computes: video I/O, models, control, tracks, masks, sampler, training.

Never imports gradio or studio. Heavy libraries (torch, diffusers, transformers) are imported lazily inside
functions so that light users (the UI shell, the CLI's probe) start fast.
"""
from pipelines.errors import UserError

__all__ = ["UserError"]
