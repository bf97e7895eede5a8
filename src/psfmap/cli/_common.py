"""Helpers shared by the sub-commands: output checks, progress bars, summaries."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from psfmap.cli import UsageError


def check_outputs(inputs: Iterable[str | os.PathLike], outputs: Iterable[str | os.PathLike | None]):
    """Refuse to write over an input file and to write into a missing folder."""
    resolved_inputs = {Path(p).resolve() for p in inputs if p is not None}
    for output in outputs:
        if output is None:
            continue
        target = Path(output).resolve()
        if target in resolved_inputs:
            raise UsageError(f"output {str(output)!r} is also an input; refusing to overwrite it")
        if not target.parent.is_dir():
            raise UsageError(f"output folder {str(Path(output).parent)!r} does not exist")


def show_progress(args) -> bool:
    """Progress bars only on a terminal and without --quiet."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def progress_bar(args, total: int, description: str):
    """A tqdm bar (disabled when not a TTY or with --quiet); use as a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=not show_progress(args), leave=False)


def summary(args, line: str) -> None:
    """Print the one-line summary unless --quiet."""
    if not getattr(args, "quiet", False):
        print(line)


def warn(args, line: str) -> None:
    """A one-line warning on stderr (shown even with --quiet: it concerns the result)."""
    print(f"psfmap {args.command}: warning: {line}", file=sys.stderr)


def parse_pair(text: str, name: str, cast=int) -> tuple:
    """Parse '4x4' or '4' into a pair."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError:
        raise UsageError(f"{name} must look like 4x4, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UsageError(f"{name} must look like 4x4, got {text!r}")
    return values
