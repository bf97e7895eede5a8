"""Command-line interface: ``psfmap <command> ...``.

A thin layer over the verbs: each sub-command lives in its own module of this package, which
defines ``add_parser(subparsers)`` (arguments, help with an example) and ``run(args)`` (read
files, call the verb, write files atomically, print a one-line summary). No algorithm lives
here.

Exit codes, the same for every command:

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     success: every output written (a signal arriving once the outputs are being renamed into
      place does not undo them)
1     error: unreadable or unsuitable input data, a failed write, not enough memory; one line
      ``psfmap CMD: error: ...`` on stderr (the traceback only with ``--debug``)
2     usage error: unknown or missing option, a bad option value (out of range, NaN, ...), an
      output that cannot be written (folder missing or read-only, file read-only, output named
      as an input); nothing is computed
130   interrupted (SIGINT, Ctrl-C: 128 + 2)
143   terminated (SIGTERM: 128 + 15)
====  ==========================================================================================

On 1, 2, 130 and 143 no output is written or changed: outputs are written under temporary
names (``.NAME.PID.XXXXXXXX.tmp``) and renamed into place together at the end. A process
killed outright (SIGKILL, exit status -9) cannot clean up; the next run writing the same
outputs removes the temporary files of dead processes. Python warnings raised by the verbs
are printed as one line ``psfmap CMD: warning: ...``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import re
import signal
import sys
import threading
import warnings
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
    "deepblur",
    "optics",
    "train",
    "demo",
)


# exit codes (see the table above)
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL_BASE = 128  # + the signal number, as shells report a process ended by a signal


class UsageError(Exception):
    """A problem with the command line itself (exit code 2)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM received: unwinds the command (a ``BaseException``, so that no
    ``except Exception`` on the way swallows it) and leaves through ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``psfmap`` parser with every sub-command, or with ``command``'s alone.

    Building one sub-command imports only its module: a command then loads what it needs and
    nothing more (``psfmap deblur`` would otherwise load the modules of all eleven).
    """
    parser = argparse.ArgumentParser(
        prog="psfmap",
        description="Model, measure and remove spatially-variant blur in microscopy images.",
        epilog="Run 'psfmap COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if command is None else (command,):
        try:
            module = importlib.import_module(f"psfmap.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"psfmap.cli.{name}":
                continue  # command not built in this installation
            raise
        sub = module.add_parser(subparsers)
        add_common_flags(sub)
        sub.set_defaults(_run=module.run, _parser=sub)
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
        # no prefixes: '--plane 16' must not be read as '--plane-by-plane' then a stray '16'
        allow_abbrev=False,
    )


def _version() -> str:
    from psfmap import __version__

    return f"psfmap {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``psfmap COMMAND ...``; return the exit code (see the table in this module)."""
    # the handlers go in first: a signal while the commands import torch is one line too
    with _signals_unwind() as state:
        try:
            words = list(sys.argv[1:] if argv is None else argv)
            # the first word names the command unless it is an option (--help, --version)
            chosen = words[0] if words and words[0] in COMMANDS else None
            parser = build_parser(chosen)
            args, unknown = parser.parse_known_args(words)  # exits 2 on usage errors
            if unknown:  # said by the command's own parser, with its usage, not psfmap's
                getattr(args, "_parser", parser).error(
                    f"unrecognized arguments: {' '.join(unknown)}")
            _raise_pending(state)
        except (Interrupted, KeyboardInterrupt) as error:
            signum = getattr(error, "signum", signal.SIGINT)
            print(f"psfmap: {_signal_word(signum)}", file=sys.stderr)
            return EXIT_SIGNAL_BASE + int(signum)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return _run(args, state)


def entry() -> None:
    """The ``psfmap`` script: :func:`main`, then a quick exit.

    With torch loaded, the interpreter's own finalisation (freeing its objects one by one)
    costs 0.5-0.9 s, a fifth of a short command. By the time :func:`main` returns, every
    output is written, closed and renamed into place, so the exit handlers run and the streams
    are flushed, and the process ends without that finalisation. When other threads are still
    alive (a distributed client winding down; daemon threads do not count) the normal exit
    waits for them.
    """
    code = main()
    if any(not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging, dask, tempfile: what a normal exit would run
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _run(args, state: dict) -> int:
    from psfmap._container import deferred_writes

    # the command's files are renamed into place together at the end, or not at all (train
    # reads its weights' card back to report, so its files are written at once)
    group = (contextlib.nullcontext() if getattr(args, "reads_own_outputs", False)
             else deferred_writes())
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.command)
        try:
            with group as writes:
                state["writes"] = writes
                status = args._run(args)
                _raise_pending(state)  # before the outputs are renamed into place
            state["done"] = True
        except BaseException as error:  # noqa: BLE001 - every failure becomes one line
            state["done"] = True  # a second signal does not cut the clean-up short
            return _fail(args, error)
    return int(status or 0)


def _fail(args, error: BaseException) -> int:
    """Remove the outputs the command created, print one line, return the exit code."""
    from psfmap.cli._common import remove_created

    remove_created(args)
    if isinstance(error, Interrupted) or isinstance(error, KeyboardInterrupt):
        signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
        print(f"psfmap {args.command}: {_signal_word(signum)}; no output written",
              file=sys.stderr)
        return EXIT_SIGNAL_BASE + int(signum)
    if isinstance(error, UsageError):
        print(f"psfmap {args.command}: usage error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(error, Exception):  # SystemExit, GeneratorExit: not ours to translate
        raise error
    if args.debug:
        raise error
    memory = _memory_message(args, error)
    if memory is not None:
        message = memory
    else:
        text = str(error).strip()
        message = text.splitlines()[0] if text else repr(error)
    print(f"psfmap {args.command}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _signal_word(signum: int) -> str:
    return "terminated" if signum == signal.SIGTERM else "interrupted"


@contextlib.contextmanager
def _signals_unwind():
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while a command runs (so that the
    clean-up of :func:`main` runs for both), and restore the previous handlers after.

    Once the command's outputs are being renamed into place (``writes.committing``), a signal
    is noted and ignored: stopping half-way would leave some outputs new and others missing.
    Outside the main thread (handlers cannot be installed there) nothing changes.

    A handler that runs inside a weakref callback or a ``__del__`` (e.g. the import system's
    module-lock callback, while the commands import torch) raises where Python only reports
    the exception and goes on: the signal is therefore also kept in ``state["pending"]``,
    which :func:`_raise_pending` turns back into :class:`Interrupted` once the command line is
    parsed and once the work is done, and that report is left out of stderr.
    """
    state: dict = {"writes": None, "done": False, "pending": None}

    def handler(signum, frame):
        writes = state["writes"]
        if state["done"] or getattr(writes, "committing", False):
            return
        state["pending"] = signum
        raise Interrupted(signum)

    report = sys.unraisablehook

    def unraisable(info):
        if not isinstance(info.exc_value, Interrupted):  # an Interrupted stays pending
            report(info)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread
            break
    if previous:
        sys.unraisablehook = unraisable
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if previous:
            sys.unraisablehook = report


def _raise_pending(state: dict) -> None:
    """Raise the :class:`Interrupted` of a signal whose exception was swallowed."""
    if state["pending"] is not None:
        raise Interrupted(state["pending"])


def _one_line_warning(command: str):
    """``warnings.showwarning`` replacement: ``psfmap CMD: warning: first line`` on stderr."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()
        print(f"psfmap {command}: warning: {text[0] if text else category.__name__}",
              file=sys.stderr)

    return show


# the phrases of allocation failures: torch's CPU and CUDA allocators, NumPy, the OS
_MEMORY_PHRASES = ("can't allocate memory", "out of memory", "unable to allocate",
                   "cannot allocate memory", "failed to allocate")


def _memory_message(args, error: Exception) -> str | None:
    """One line for an allocation failure (MemoryError, torch's RuntimeError), with the size
    asked for when the message gives it, and what to try; None for any other error."""
    text = str(error)
    if not isinstance(error, MemoryError) and not (
        isinstance(error, RuntimeError) and any(p in text.lower() for p in _MEMORY_PHRASES)
    ):
        return None
    needs = ""
    found = re.search(r"allocate ([0-9.]+) ?(bytes|[KMGT]i?B)\b", text)
    if found:
        units = {"bytes": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
                 "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
        size = float(found.group(1)) * units[found.group(2)]
        needs = f" (needs {size / 1e9:.3g} GB more)"
    if args.command in TILED:
        tile = getattr(args, "tile", 0) or 0
        smaller = max(TILE_FLOOR, tile // 2) if tile else 1024
        hint = f"try --tile {smaller} (restores the image in pieces, memory bounded by the tile)"
    else:
        hint = "try a crop of the image, or fewer frames (--plane where the command has it)"
    return f"not enough memory{needs}; {hint}"


# commands with --tile: an allocation failure suggests it (halving a given tile, down to the
# smallest tile the verbs accept)
TILED = ("deblur", "deconvolve")
TILE_FLOOR = 32


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
