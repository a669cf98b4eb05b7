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
    try:
        code = args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
