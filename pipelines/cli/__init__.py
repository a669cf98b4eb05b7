"""`python -m pipelines <command>`.

Each module in this package defines ``register(subparsers)``, adding its commands; a command's handler takes
the parsed args and returns an exit code (or None for 0). Handlers import heavy libraries inside themselves so
that ``--help`` and light commands stay fast. A ``UserError`` becomes one ``error: ...`` line on stderr and
exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys

from pipelines.errors import UserError

log = logging.getLogger("pipelines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description="IC-LoRA Studio command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    g = parser.add_argument_group("size limits (pipelines.limits; refused before any work, naming the flag)")
    # own dests: subcommands have options of the same name (tracks auto --max-frames reads N frames)
    g.add_argument("--max-frames", dest="limit_max_frames", type=int, default=None, metavar="N",
                   help="frames of any video (default 257)")
    g.add_argument("--max-pixels", dest="limit_max_pixels", type=int, default=None, metavar="N",
                   help="width x height of one frame (default 4194304 = 2048x2048)")
    g.add_argument("--max-volume", dest="limit_max_volume", type=int, default=None, metavar="N",
                   help="frames x width x height (default 269484032 = 257 frames at 1024x1024)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipelines import limits

    try:
        lim = limits.Limits(how="cli").with_overrides(
            max_frames=args.limit_max_frames, max_pixels=args.limit_max_pixels, max_volume=args.limit_max_volume)
        with limits.using(lim):
            code = args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or missing folder: the machine, said plainly
        from pipelines.errors import os_error_message

        log.debug("OSError in %s", args.command, exc_info=exc)
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
