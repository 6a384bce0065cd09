"""The `wabridge` console script: one parser, one module per command under wabridge/cli/.

Each command module has `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Exit codes: 0 success, 1 the work failed, 2 bad usage or configuration (said in one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from wabridge.engine.secrets import SecretKeyError
from wabridge.engine.settings import SettingsError

COMMANDS = ("serve", "migrate", "tenants", "replay", "trace", "messages", "transform", "sim", "demo", "keygen")


class Parser(argparse.ArgumentParser):
    """Bad usage is one clear line and exit 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="wabridge", description="WhatsApp Cloud API -> Genesys Cloud Open Messaging bridge.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"wabridge.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"wabridge.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"wabridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A key that cannot open the stored secrets is a configuration fault, whichever command meets it first
        # (tenants, replay, migrate --reencrypt-secrets, serve's start-up check): one line, no traceback.
        found = _key_error(exc)
        if found is None:
            raise
        print(f"wabridge: {found}", file=sys.stderr)
        return 2


def _key_error(exc: BaseException) -> SecretKeyError | None:
    """The SecretKeyError in `exc`, also when a task group wrapped it in an ExceptionGroup."""
    if isinstance(exc, SecretKeyError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _key_error(inner)) is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
