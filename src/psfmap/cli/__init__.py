"""Command-line interface: ``psfmap <command> ...``.

A thin layer over the verbs: each sub-command lives in its own module of this package, which
defines ``add_parser(subparsers)`` (arguments, help with an example) and ``run(args)`` (read
files, call the verb, write files atomically, print a one-line summary). No algorithm lives
here.

Exit codes: 0 success, 2 usage error, 1 any other error with a one-line message on stderr
(the traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence

# sub-command name -> module in this package; order is the order shown by --help
COMMANDS = (
    "simulate",
    "deconvolve",
    "calibrate",
    "identify",
    "estimate",
    "deblur",
    "depth",
    "train",
    "demo",
)


class UsageError(Exception):
    """A problem with the command line itself (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psfmap",
        description="Model, measure and remove spatially-variant blur in microscopy images.",
        epilog="Run 'psfmap COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"psfmap.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"psfmap.cli.{name}":
                continue  # command not built in this installation
            raise
        sub = module.add_parser(subparsers)
        add_common_flags(sub)
        sub.set_defaults(_run=module.run)
    return parser


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--debug", action="store_true", help="show the traceback on error")


def command_parser(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """Create a sub-command parser whose help ends with a runnable example."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _version() -> str:
    from psfmap import __version__

    return f"psfmap {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    if args.command is None:
        parser.print_help()
        return 2
    from psfmap._container import deferred_writes
    from psfmap.cli._common import remove_created

    # the command's files are renamed into place together at the end, or not at all (train
    # reads its weights' card back to report, so its files are written at once)
    group = (contextlib.nullcontext() if getattr(args, "reads_own_outputs", False)
             else deferred_writes())
    try:
        with group:
            status = args._run(args)
    except UsageError as error:
        remove_created(args)
        print(f"psfmap {args.command}: usage error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_created(args)
        print(f"psfmap {args.command}: interrupted", file=sys.stderr)
        return 1
    except Exception as error:  # every failure becomes one line unless --debug
        remove_created(args)
        if args.debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"psfmap {args.command}: error: {message}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
