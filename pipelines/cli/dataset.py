"""`python -m pipelines dataset check DIR_OR_ZIP [--trigger WORD] [--json] [--references]`

The training dataset report before any GPU work: clip count against the 15-40 guidance, what conforming does
to each clip, near-duplicates, faces, coverage of angles and lighting, unreadable files. Exit 0 even with
warnings; exit 2 when the dataset is missing or has no readable clip.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("dataset", help="training datasets: check a folder or zip of clips",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("check", help="report on a dataset folder or .zip (text, or JSON with --json)")
    p.add_argument("path", metavar="DIR_OR_ZIP", help="folder or .zip of clips with optional same-name .txt captions")
    p.add_argument("--trigger", help="trigger word prepended to every caption")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-frames", type=int, default=121, help="longest bucket in frames (8n+1, default 121)")
    p.add_argument("--multiple", type=int, default=32, help="bucket sides are multiples of this (default 32)")
    p.add_argument("--area", type=int, default=512 * 512, help="bucket area in pixels (default 512*512)")
    p.add_argument("--references", action="store_true", help="also choose a reference frame for every clip")
    p.add_argument("--strategy", choices=["other_clip", "same_clip"], default="other_clip",
                   help="where references come from (default: another clip of the subject)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference assignment")
    p.set_defaults(handler=_check)


def _check(args) -> int:
    from pipelines.cli import print_json
    from pipelines.errors import UserError
    from pipelines.training.dataset import scan_dataset

    report = scan_dataset(args.path, trigger=args.trigger, bucket_multiple=args.multiple, max_frames=args.max_frames,
                          target_area=args.area)
    refs = None
    if args.references and report.clips:
        from pipelines.training.references import assign_references

        refs = assign_references(report, strategy=args.strategy, seed=args.seed)
    if args.json:
        data = report.to_dict()
        if refs is not None:
            data["references"] = {k: v.to_dict() for k, v in refs.items()}
        print_json(data)
    else:
        print(report.text())
        if refs is not None:
            print("\nReferences:")
            for target, ref in refs.items():
                where = f"{ref.source} frame {ref.frame} box {ref.box}" if ref.kind == "clip" else ref.source
                print(f"  {target} <- {where} (score {ref.score})")
    sys.stdout.flush()
    if report.errors:
        raise UserError("; ".join(report.errors))
    return 0
