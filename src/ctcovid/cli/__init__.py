"""Command-line interface: the only package that reads argv and writes to stdout.

Each command module (``data_cmds``, ``train_cmds``, ...) defines ``COMMANDS``: name -> (help,
add_arguments(parser), run(args) -> exit code). Commands import what they need lazily so
``ctcovid --help`` stays fast. User-facing errors (:class:`~ctcovid.errors.CtcovidError`) become one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence

from ctcovid import __version__
from ctcovid.errors import CtcovidError

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
_MODULES = ("data_cmds", "train_cmds", "evaluate_cmds", "predict_cmds")


def commands() -> dict[str, Command]:
    out: dict[str, Command] = {}
    for name in _MODULES:
        if importlib.util.find_spec(f"ctcovid.cli.{name}") is None:
            continue  # a command group still being written
        out.update(importlib.import_module(f"ctcovid.cli.{name}").COMMANDS)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctcovid", description="COVID-19 diagnosis and severity from chest CT with 3D CNNs."
    )
    parser.add_argument("--version", action="version", version=f"ctcovid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add, _) in commands().items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _is_user_error(e: BaseException) -> bool:
    """Our own errors, and the model registry's (models/ depends on torch only, so it has its own)."""
    registry = sys.modules.get("ctcovid.models.registry")
    return isinstance(e, CtcovidError) or (registry is not None and isinstance(e, registry.ModelError))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return commands()[args.command][2](args)
    except Exception as e:
        if not _is_user_error(e):
            raise
        print(f"ctcovid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctcovid {args.command}: interrupted", file=sys.stderr)
        return 130
