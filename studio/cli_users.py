"""Manage the users file of a shared studio.

    python -m studio.cli_users add USERS_FILE NAME [--password-stdin] [--force]
    python -m studio.cli_users remove USERS_FILE NAME
    python -m studio.cli_users list USERS_FILE

``add`` prompts twice for the password (hidden); ``--password-stdin`` reads one line from stdin instead (for
scripts: ``echo "$PW" | python -m studio.cli_users add users.json alice --password-stdin``). Errors print one
``error: ...`` line and exit 2.
"""
from __future__ import annotations

import argparse
import getpass
import sys

from pipelines.errors import UserError
from studio import auth


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    second = getpass.getpass("again: ")
    if first != second:
        raise UserError("the two passwords differ; nothing was changed")
    return first


def _cmd_add(args: argparse.Namespace) -> int:
    auth.validate_username(args.name)  # before prompting: fail fast on a bad name or an existing user
    if not args.force and args.name in auth.list_users(args.users_file):
        raise UserError(f"user {args.name!r} already exists in {args.users_file}; pass --force to change their password")
    auth.add_user(args.users_file, args.name, _read_password(args), overwrite=args.force)
    print(f"{'updated' if args.force else 'added'} user {args.name} in {args.users_file}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    if not auth.remove_user(args.users_file, args.name):
        raise UserError(f"no user {args.name!r} in {args.users_file}")
    print(f"removed user {args.name} from {args.users_file}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for name in auth.list_users(args.users_file):
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.cli_users", description="manage studio users")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("add", help="add a user (or change a password with --force)")
    p.add_argument("users_file")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.add_argument("--force", action="store_true", help="replace the password of an existing user")
    p.set_defaults(handler=_cmd_add)
    p = sub.add_parser("remove", help="remove a user")
    p.add_argument("users_file")
    p.add_argument("name")
    p.set_defaults(handler=_cmd_remove)
    p = sub.add_parser("list", help="list user names")
    p.add_argument("users_file")
    p.set_defaults(handler=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        print("error: interrupted; nothing was changed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
