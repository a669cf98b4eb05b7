"""`python -m pipelines models [download]`: what is in the models folder, and getting the official weights.

    python -m pipelines models [--models-dir DIR]
        JSON: every model (tiny, official single files, diffusers folders) with its components found or missing,
        and every official LTX-2.3 file with what it is for and whether it is there.
    python -m pipelines models download [--variant distilled|dev|fp8] [--file KEY ...] [--dir DIR] [--token T]
                                        [--plan] [--progress bar|json]
        Prints the plan (repo, file, size, destination, what is already there) as JSON, checks the free disk
        space, then downloads (resumable: run it again after an interruption). --plan stops after the plan.
"""
from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    from pipelines.models.registry import BY_KEY, VARIANTS

    m = subparsers.add_parser("models", help="models folder status (JSON); `models download` fetches the weights",
                              description="Model status as JSON: each model's components and the official files.")
    m.add_argument("--models-dir", default=None, help="models folder (default $ICLORA_MODELS_DIR)")
    m.set_defaults(handler=_models)
    sub = m.add_subparsers(dest="models_command", metavar="ACTION")
    d = sub.add_parser("download", help="download the official LTX-2.3 weights (plan first, resumable)",
                       description="Download official LTX-2.3 files from the Hugging Face Hub into the models "
                                   "folder. Sets: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in VARIANTS.items()))
    d.add_argument("--variant", choices=list(VARIANTS), default=None,
                   help="a set of files (default distilled when no --file is given)")
    d.add_argument("--file", action="append", default=[], choices=list(BY_KEY), metavar="KEY",
                   help="one more catalogue file (repeatable): " + ", ".join(BY_KEY))
    d.add_argument("--dir", default=None, help="models folder (default --models-dir / $ICLORA_MODELS_DIR)")
    d.add_argument("--token", default=None, help="Hugging Face token for the gated Gemma repo "
                                                 "(default HF_TOKEN or `hf auth login`)")
    d.add_argument("--plan", action="store_true", help="print the plan and stop")
    d.add_argument("--progress", choices=["bar", "json"], default="bar",
                   help="bar: a console progress bar; json: one JSON line per update on stdout")
    d.set_defaults(handler=_download)


def _models_dir(explicit) -> str | None:
    from pipelines.config import Paths

    md = Paths.resolve(models_dir=explicit).models_dir
    return str(md) if md else None


def _models(args) -> int:
    from pipelines.cli import print_json
    from pipelines.models.registry import catalog_status, discover

    md = _models_dir(args.models_dir)
    print_json({"models_dir": md, "models": [s.to_dict() for s in discover(md)], "files": catalog_status(md)})
    return 0


def _download(args) -> int:
    from pipelines.models.download import download, plan_download

    md = _models_dir(args.dir or args.models_dir)
    variant = args.variant or (None if args.file else "distilled")
    plan = plan_download(md, variant, args.file, token=args.token)
    as_json = args.progress == "json"
    _emit({"event": "plan", **plan.to_dict()}, as_json, pretty=not as_json)
    if args.plan:
        return 0
    last = [-1.0]

    def progress(done, total, message):
        if not as_json:
            return
        frac = done / total if total else 1.0
        if frac - last[0] >= 0.005 or done >= total or message.endswith(("starting", "GB")):
            last[0] = frac
            _emit({"event": "progress", "done": done, "total": total, "message": message}, True)

    paths = download(plan, token=args.token, progress=progress if as_json else None)
    _emit({"event": "done", "files": paths}, as_json, pretty=not as_json)
    return 0


def _emit(obj: dict, as_json: bool, pretty: bool = False) -> None:
    if pretty:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(json.dumps(obj, default=str))
    sys.stdout.flush()
