"""Job kinds: the functions the job system runs (generate, preprocess, train, ...) and the helpers that submit
them. Tabs and the named API both import these; tabs keep layout and events only.

``register_all(ctx)`` registers every kind on ``ctx.jobs`` once, whichever tabs are built (the API works on a
studio with no tab at all). Each kind lives in its own module:

    generate    the IC-LoRA generation (gpu lane)
    preprocess  a control video from a clip (light lane)
    train       an IC-LoRA training run, resumable (gpu lane)

No tensor math here: the work is done by pipelines; these modules move typed requests, paths and text.
"""
from __future__ import annotations


def register_all(ctx) -> None:
    """Register every job kind on ``ctx.jobs`` (idempotent: a kind already registered is left as it is)."""
    from studio.kinds import generate, preprocess, train

    for mod in (generate, preprocess, train):
        mod.register(ctx)


__all__ = ["register_all"]
