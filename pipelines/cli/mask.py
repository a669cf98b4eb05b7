"""`python -m pipelines mask ...`: build a pixel mask from a spec, import one, reduce one to latent weights.

  mask build SPEC.json --out MASK.npy [--frames N --width W --height H]
  mask import SOURCE --out MASK.npy --frames N --width W --height H      (video, image, PNG folder or glob)
  mask latent MASK.npy --out LATENT.npy [--downscale D] [--strength S]  (MASK at TARGET size)

Each prints a short JSON summary (shape, min/max/mean) of what it wrote. Files are written atomically.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("mask", help="attention masks: build, import, reduce to latent weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mask_command", metavar="MASK_COMMAND")
    sub.required = True

    b = sub.add_parser("build", help="materialise a mask spec (JSON) to a (F,H,W) float32 .npy in [0,1]")
    b.add_argument("spec", help="mask spec JSON")
    b.add_argument("--out", required=True, help="output .npy (F,H,W) float32")
    b.add_argument("--frames", type=int, help="override the spec's frame count (8n+1)")
    b.add_argument("--width", type=int, help="override the spec's width (multiple of 32)")
    b.add_argument("--height", type=int, help="override the spec's height (multiple of 32)")
    b.set_defaults(handler=_build)

    i = sub.add_parser("import", help="import a mask video / PNG sequence / image, conformed to the target")
    i.add_argument("source", help="video file, image, folder of images or glob pattern")
    i.add_argument("--out", required=True, help="output .npy (F,H,W) float32")
    i.add_argument("--frames", type=int, required=True, help="target frame count")
    i.add_argument("--width", type=int, required=True, help="target width")
    i.add_argument("--height", type=int, required=True, help="target height")
    i.set_defaults(handler=_import)

    lat = sub.add_parser("latent", help="reduce a target-size pixel mask to per-token latent weights")
    lat.add_argument("mask", help=".npy (F,H,W) or (H,W) at the TARGET size, values in [0,1]")
    lat.add_argument("--out", required=True, help="output .npy (f,h,w) float32")
    lat.add_argument("--downscale", type=int, default=1,
                     help="the IC-LoRA's reference_downscale_factor D (reference is H/D x W/D); default 1")
    lat.add_argument("--strength", type=float, default=1.0, help="attention strength multiplied in; default 1")
    lat.set_defaults(handler=_latent)


def _build(args) -> int:
    from pipelines.masks import load_spec, materialise, save_npy, summary

    from pipelines.limits import active

    spec = load_spec(args.spec, width=args.width, height=args.height, frames=args.frames)
    active().check_video("mask", spec.width, spec.height, spec.frames)  # (F,H,W) float32: before it exists
    mask = materialise(spec)
    path = save_npy(mask, args.out)
    _print({"out": str(path), **summary(mask), "strength": spec.strength})
    return 0


def _import(args) -> int:
    from pipelines.masks import import_mask, save_npy, summary

    from pathlib import Path

    from pipelines.limits import active, probe_video_input
    from pipelines.masks import IMAGE_SUFFIXES

    active().check_video("mask", args.width, args.height, args.frames)
    src = Path(args.source)
    if src.is_file() and src.suffix.lower() not in IMAGE_SUFFIXES:
        probe_video_input(src, "mask video")  # the whole video is decoded: what that costs, first
    imported = import_mask(args.source, args.width, args.height, args.frames)
    path = save_npy(imported.mask, args.out)
    _print({"out": str(path), **summary(imported.mask), "changes": imported.changes})
    return 0


def _latent(args) -> int:
    import numpy as np

    from pipelines.errors import UserError
    from pipelines.masks import check_unit, latent_weights_at_target, save_npy, summary

    from pipelines.limits import probe_mask_input

    check_unit(args.strength, "--strength")
    probe_mask_input(args.mask, "mask")  # exists, is a .npy of numbers, its shape within the limits
    try:
        mask = np.load(args.mask, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {args.mask} as a .npy array: {exc}") from None
    weights = latent_weights_at_target(mask, args.downscale)
    weights *= np.float32(args.strength)
    path = save_npy(weights, args.out)
    _print({"out": str(path), **summary(weights), "pixel_shape": list(mask.shape), "downscale": args.downscale,
            "strength": args.strength})
    return 0


def _print(obj) -> None:
    from pipelines.cli import print_json

    print_json(obj)
