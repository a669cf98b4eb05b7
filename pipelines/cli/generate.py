"""`python -m pipelines generate | lora inspect`: generation and LoRA introspection (`models`: cli/models.py).

generate builds a GenerateRequest from the flags (the same request the studio queues) and runs it through
EngineService; it prints a JSON summary and writes OUT.mp4 plus OUT.json (the request + run metadata).
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate a video with an IC-LoRA (control videos, mask, LoRAs)",
                              description="Generate a video. Prints a JSON summary; writes OUT.mp4 and OUT.json.")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt (used with --schedule full / --cfg > 1)")
    p.add_argument("--control", action="append", default=[], metavar="VIDEO",
                   help="control video (or image); repeat for several references")
    p.add_argument("--control-strength", type=float, default=1.0, metavar="S",
                   help="conditioning strength of every control (reference timestep t * (1 - S))")
    p.add_argument("--mask", default=None, metavar="MASK.npy",
                   help="attention mask (H,W) or (F,H,W) in [0,1] at the reference pixel size")
    p.add_argument("--attention-strength", type=float, default=1.0, metavar="S")
    p.add_argument("--image", default=None, metavar="IMG", help="first-frame image")
    p.add_argument("--image-strength", type=float, default=1.0)
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]")
    p.add_argument("--schedule", choices=["distilled", "full"], default="distilled")
    p.add_argument("--stages", type=int, choices=[1, 2], default=1)
    p.add_argument("--keep-ic-stage2", action="store_true", help="keep the IC-LoRA and reference in stage 2")
    p.add_argument("--tier", choices=["auto", "bf16", "fp8", "offload", "group_offload"], default="auto")
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default 1 distilled, 3 full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-conform", action="store_true", help="refuse controls that do not match instead of conforming")
    p.add_argument("--model", default="tiny", help="tiny or a model name from `python -m pipelines models`")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--out", required=True, metavar="OUT.mp4")
    p.set_defaults(handler=_generate)

    lo = subparsers.add_parser("lora", help="LoRA files")
    sub = lo.add_subparsers(dest="lora_command", metavar="ACTION")
    sub.required = True
    i = sub.add_parser("inspect", help="JSON summary of a LoRA file: format, rank, alpha, modules, factors, finite")
    i.add_argument("file")
    i.set_defaults(handler=_lora_inspect)


def build_request(args):
    from pipelines.errors import UserError
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec, MemoryTier, Schedule

    schedule = Schedule(args.schedule)
    cfg = args.cfg if args.cfg is not None else (1.0 if schedule == Schedule.DISTILLED else 3.0)
    if args.model != "tiny":
        from pipelines.config import Paths

        md = Paths.resolve(models_dir=args.models_dir).models_dir
        args.models_dir = str(md) if md else None
    try:
        req = GenerateRequest(
            prompt=args.prompt, negative_prompt=args.negative, model=args.model, width=args.width,
            height=args.height, frames=args.frames, fps=args.fps, seed=args.seed, schedule=schedule,
            steps=args.steps, guidance_scale=cfg, stages=args.stages, stage2_keep_ic=args.keep_ic_stage2,
            tier=MemoryTier(args.tier), image=args.image, image_strength=args.image_strength,
            controls=[ControlInput(path=c, strength=args.control_strength) for c in args.control],
            mask=args.mask, attention_strength=args.attention_strength,
            loras=[LoraSpec.parse(s) for s in args.lora], conform_controls=not args.no_conform)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return req.validate()


def _generate(args) -> int:
    from pathlib import Path

    from pipelines.cli import print_json
    from pipelines.errors import UserError
    from pipelines.service import EngineService

    req = build_request(args)
    for path in [*(c.path for c in req.controls), *(lo.path for lo in req.loras), req.image, req.mask]:
        if path and not Path(path).is_file():
            raise UserError(f"file not found: {path}")
    from pipelines.limits import active, check_generate_inputs

    active().check_generate(req.to_dict())  # sizes and counts, then every input probed: before the model loads
    check_generate_inputs(req.to_dict())
    res = EngineService(args.models_dir).generate(req, args.out)
    md = res["metadata"]
    print_json({"video": res["video"], "settings": res["settings"], "model": md["model"],
                "seconds": md["seconds"], "reference_downscale_factor": md["reference_downscale_factor"],
                "tier": md["tier"], "conform": md["conform"], "notice": md["notice"]})
    return 0


def _lora_inspect(args) -> int:
    from pipelines.cli import print_json
    from pipelines.models.lora import inspect_lora

    summary = inspect_lora(args.file)
    print_json(summary)
    return 0 if summary["finite"] else 2
