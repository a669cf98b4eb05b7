"""`python -m pipelines upscale VIDEO --out OUT.mp4 [--mode spatial|detailer --lora FILE] [--tile-width ...]`:
the detail / upscale pass (x2) on an existing video; `--plan` prints the tile plan and its predicted peak memory
without running anything."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("upscale", help="detail / upscale pass x2 on a video (spatial upscaler + refine, "
                              "or a Detailer IC-LoRA), tiled when asked",
                              description="Upscale a video 2x. Prints JSON; writes OUT.mp4 and OUT.json.")
    p.add_argument("video")
    p.add_argument("--out", metavar="OUT.mp4")
    p.add_argument("--mode", choices=["spatial", "detailer"], default="spatial")
    p.add_argument("--lora", help="the Detailer IC-LoRA (detailer mode)")
    p.add_argument("--lora-weight", type=float, default=1.0)
    p.add_argument("--prompt", default="", help="default: the prompt in the video's own metadata")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=None, help="the sigma the refine starts from (default 0.909375)")
    p.add_argument("--tile-width", type=int, help="tile width in output px (multiple of 32)")
    p.add_argument("--tile-height", type=int)
    p.add_argument("--tile-frames", type=int, help="tile length in frames (8n+1)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in px (multiple of 32)")
    p.add_argument("--overlap-frames", type=int, default=8, help="tile overlap in frames (multiple of 8)")
    p.add_argument("--plan", action="store_true", help="print the tile plan (and predicted peak memory) only")
    p.add_argument("--model", default="tiny")
    p.add_argument("--models-dir", default=None)
    p.set_defaults(handler=_upscale)


def _upscale(args) -> int:
    from pathlib import Path

    from pipelines.cli import print_json
    from pipelines.errors import UserError
    from pipelines.sampler.upscale import SCALE, UpscaleMode, UpscaleRequest, plan_for, upscale_video

    if not Path(args.video).is_file():
        raise UserError(f"file not found: {args.video}")
    kw = dict(video=args.video, mode=args.mode, lora=args.lora, lora_weight=args.lora_weight, prompt=args.prompt,
              seed=args.seed, model=args.model, tile_width=args.tile_width, tile_height=args.tile_height,
              tile_frames=args.tile_frames, overlap=args.overlap, overlap_frames=args.overlap_frames)
    if args.noise is not None:
        kw["noise"] = args.noise
    req = UpscaleRequest.from_dict(kw)
    from pipelines.limits import active, probe_video_input

    info = probe_video_input(args.video, "video")
    w, h, f = info.width // 32 * 32, info.height // 32 * 32, (info.frames - 1) // 8 * 8 + 1
    active().check_video("upscaled video", w * SCALE, h * SCALE, f)
    d = 1
    if req.mode is UpscaleMode.DETAILER:
        from pipelines.fit import lora_downscale

        d = lora_downscale([req.lora])
    plan = plan_for(req, w * SCALE, h * SCALE, f, d)
    if args.plan:
        print_json(plan.to_dict())
        return 0
    if not args.out:
        raise UserError("--out OUT.mp4 is required (or --plan to see the tile plan only)")
    from pipelines.service import EngineService

    models_dir = args.models_dir
    if args.model != "tiny":
        from pipelines.config import Paths

        md = Paths.resolve(models_dir=args.models_dir).models_dir
        models_dir = str(md) if md else None
    res = upscale_video(EngineService(models_dir).engine(req.model), req, args.out)
    md = res.metadata
    print_json({"video": str(res.path), "settings": str(res.sidecar), "width": md["width"], "height": md["height"],
                "frames": md["frames"], "plan": md["plan"]["text"], "seconds": md["seconds"], "notice": md["notice"]})
    return 0
