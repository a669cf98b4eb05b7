"""`python -m pipelines train --preset face --data DIR --out RUN_DIR [--model tiny|NAME|PATH] [--steps N] [--resume]
[--checkpoint-every N] [--sample-every N] [--trigger WORD] [--lr X] [--rank R] [--alpha A] [--seed S]`

Train an identity IC-LoRA from a folder (or .zip) of clips: dataset check -> references -> cache (resumable)
-> LoRA training with checkpoints (RUN_DIR/checkpoints/step_XXXXX/ with lora.safetensors and a validation
sample) -> RUN_DIR/lora.safetensors (ComfyUI / official format) + lora.sanity.json.
While it runs, touch RUN_DIR/control/sample_now, save_now or stop to ask for a sample, a checkpoint, or a
clean stop. --resume continues from the last checkpoint with the same loss curve as an uninterrupted run.
Multi-GPU: `accelerate launch --multi_gpu --num_processes N -m pipelines train ...` or
`torchrun --nproc_per_node N -m pipelines train ...` (same arguments; rank 0 fills the cache first and writes
every file, the ranks train on different clips with averaged gradients).
--request FILE takes a whole TrainRequest as JSON instead of the flags (what the studio's multi-GPU jobs run).
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an IC-LoRA (Face preset) from a folder of clips",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="face", help="preset name (presets/NAME.json) or a recipe .json path")
    p.add_argument("--data", help="folder or .zip of clips (+ optional same-name .txt captions)")
    p.add_argument("--out", help="run folder (cache, checkpoints, samples, loss.jsonl, final LoRA)")
    p.add_argument("--request", help="a TrainRequest as a JSON file (data, out, preset, overrides, ...): replaces "
                                     "the flags above")
    p.add_argument("--model", default="tiny", help="'tiny', a model name in --models-dir, or a diffusers folder")
    p.add_argument("--models-dir", default=None, help="models folder (default: $ICLORA_MODELS_DIR)")
    p.add_argument("--steps", type=int, help="training steps (preset default: 1000)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default 250; 0 = only at the end)")
    p.add_argument("--sample-every", type=int, help="validation sample every N steps (default 250; 0 = never)")
    p.add_argument("--trigger", help="trigger word prepended to captions")
    p.add_argument("--lr", type=float)
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--validation-reference", help="image used as the reference of every validation sample")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_train)


def _train(args) -> int:
    from pipelines.errors import UserError
    from pipelines.training.recipe import TrainRequest

    if args.request:
        import json as _json
        from pathlib import Path

        try:
            req = TrainRequest.from_dict(_json.loads(Path(args.request).read_text())).validate()
        except (OSError, ValueError) as exc:
            raise UserError(f"--request {args.request}: {exc}") from None
        return _run(req, args)
    if not args.data or not args.out:
        raise UserError("train needs --data and --out (or --request FILE)")
    overrides = {k: v for k, v in {"steps": args.steps, "checkpoint_every": args.checkpoint_every,
                                   "sample_every": args.sample_every, "lr": args.lr, "rank": args.rank,
                                   "alpha": args.alpha, "seed": args.seed}.items() if v is not None}
    req = TrainRequest(data=args.data, out=args.out, preset=args.preset, model=args.model,
                       models_dir=args.models_dir, trigger=args.trigger, resume=args.resume, overrides=overrides,
                       validation_reference=args.validation_reference).validate()
    return _run(req, args)


def _run(req, args) -> int:
    import sys

    from pipelines.cli import print_json
    from pipelines.training.export import sanity_text
    from pipelines.training.trainer import TrainCallbacks, run_training

    def progress(step, total, loss, sps):
        eta = (total - step) * sps
        print(f"step {step}/{total} loss {loss:.4f} {sps:.2f} s/step eta {eta / 60:.1f} min", file=sys.stderr, flush=True)

    res = run_training(req, callbacks=TrainCallbacks(progress=progress),
                       on_status=lambda msg: print(msg, file=sys.stderr, flush=True))
    import json

    sanity_path = res.run_dir / "lora.sanity.json"
    sanity = json.loads(sanity_path.read_text()) if sanity_path.exists() else None
    out = {"run_dir": str(res.run_dir), "step": res.step, "total": res.total, "stopped": res.stopped,
           "lora": str(res.run_dir / "lora.safetensors"), "checkpoints": [str(c) for c in res.checkpoints],
           "samples": [str(s) for s in res.samples], "seconds_per_step": round(res.seconds_per_step, 4),
           "sanity": {k: v for k, v in (sanity or {}).items() if k != "update_norms"}}
    if args.json:
        print_json(out)
    else:
        if sanity:
            print(sanity_text(sanity))
        print(f"{'stopped' if res.stopped else 'finished'} at step {res.step}/{res.total}; LoRA: {out['lora']}")
    return 0
