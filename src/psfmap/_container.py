"""One self-describing file format for operators, families and PSF maps.

A psfmap file is a NumPy ``.npz`` archive (no pickle) holding named arrays plus one JSON
header entry ``__header__`` with the format name, the format version, the kind of object and
its metadata (optics, provenance). Loading checks all three and fails with a clear message on
a foreign file, another kind, or a newer format version. Writes are atomic: the archive is
written to a temporary file in the destination folder and renamed over the target.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from psfmap._memory import memory_problem

FORMAT_NAME = "psfmap"
FORMAT_VERSION = 1

# (temporary file, target) pairs written inside `deferred_writes`, renamed when it ends well
_DEFERRED: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("deferred", default=None)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the destination folder so the rename is atomic; it is removed
    if ``write`` fails, so a failed write never leaves a partial file behind. Its name,
    ``.NAME.PID.XXXXXXXX.tmp``, carries the writer's process id: a process killed outright
    (SIGKILL, power loss) cannot clean up, and the next write of the same output removes the
    temporary files whose process is gone (:func:`sweep_stale_temps`), never those of a live
    concurrent writer. A folder or file that refuses the write raises one ``OSError`` whose
    message says which output and why (no chained clean-up traceback).
    """
    path = Path(path)
    if not path.parent.exists():
        raise ValueError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; expected a file name")
    sweep_stale_temps(path)
    try:
        handle, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
        )
    except OSError as error:
        raise OSError(f"cannot write {str(path)!r}: its folder refuses new files "
                      f"({error.strerror or error})") from None
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        # mkstemp creates 0600; give the result the permissions of a normally created file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        pending = _DEFERRED.get()
        if pending is None:
            _replace(tmp_path, path)
        else:
            pending.append((tmp_path, path))
    except BaseException as error:
        # the clean-up must not hide the reason (a second traceback chained to the first)
        with suppress(OSError):
            tmp_path.unlink(missing_ok=True)
        if isinstance(error, OSError) and not str(error).startswith("cannot write"):
            raise OSError(f"cannot write {str(path)!r} ({error.strerror or error})") from None
        raise
    return path


def _replace(tmp_path: Path, path: Path) -> None:
    """``os.replace`` whose failure (an immutable or busy target) names the output."""
    try:
        os.replace(tmp_path, path)
    except OSError as error:
        raise OSError(f"cannot write {str(path)!r}: replacing it failed "
                      f"({error.strerror or error})") from None


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (alive) / not a pid
        return pid > 0
    return True


def sweep_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that no longer run.

    :func:`atomic_write` names them ``.NAME.PID.XXXXXXXX.tmp``; only those whose ``PID`` is
    not a running process are removed (a file of a live concurrent writer is kept; a recycled
    PID only delays the clean-up). Files that cannot be removed are left. Returns the removed
    paths.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        candidates = list(path.parent.glob(f"{glob.escape(prefix)}*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        middle = candidate.name[len(prefix):-len(".tmp")].split(".")
        if len(middle) != 2 or not middle[0].isdigit() or _writer_alive(int(middle[0])):
            continue
        with suppress(OSError):
            candidate.unlink()
            removed.append(candidate)
    return removed


class WriteGroup:
    """State of a :func:`deferred_writes` block: ``committing`` turns true just before the
    first rename into place (from then on the group completes: a signal handler that sees it
    should let the renames finish instead of interrupting them half-way)."""

    def __init__(self) -> None:
        self.committing = False
        self.pending: list[tuple[Path, Path]] = []


@contextmanager
def deferred_writes() -> Iterator[WriteGroup]:
    """All or nothing for a group of writes: inside, :func:`atomic_write` leaves each file
    under its temporary name; when the block ends well they are all renamed into place, and
    when it raises they are all removed, so a failed command changes no file, not even one it
    would have replaced. Files written inside cannot be read back before the block ends.

    Yields a :class:`WriteGroup`; its ``committing`` flag is set before the renames start, so
    that :func:`psfmap.cli.main`'s SIGINT/SIGTERM handler lets them complete (a rename loop
    cut half-way would leave some outputs new and others missing).
    """
    group = WriteGroup()
    token = _DEFERRED.set(group.pending)
    try:
        yield group
    except BaseException:
        for tmp_path, _ in group.pending:
            with suppress(OSError):
                tmp_path.unlink(missing_ok=True)
        raise
    else:
        group.committing = True
        for index, (tmp_path, path) in enumerate(group.pending):
            try:
                _replace(tmp_path, path)
            except OSError:
                for leftover, _ in group.pending[index:]:
                    with suppress(OSError):
                        leftover.unlink(missing_ok=True)
                raise
    finally:
        _DEFERRED.reset(token)


def jsonable(value: Any) -> Any:
    """``value`` with NumPy numbers and arrays turned into plain JSON types (dict keys to str)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def check_version(found: Any, supported: int, path: str | os.PathLike, what: str) -> int:
    """Refuse a file written by a newer psfmap (format ``found`` > ``supported``)."""
    if isinstance(found, bool) or not isinstance(found, (int, type(None))):
        raise ValueError(f"{str(path)!r} has a corrupted {what} version {found!r}")
    version = int(found or 0)
    if version > supported:
        raise ValueError(
            f"{str(path)!r} uses {what} version {version}, newer than the version "
            f"{supported} this psfmap reads; upgrade psfmap to load it"
        )
    return version


def save_container(
    path: str | os.PathLike,
    kind: str,
    arrays: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``arrays`` and a JSON header (format, version, kind, metadata) atomically."""
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "kind": kind,
        "metadata": jsonable(dict(metadata or {})),
    }
    payload = {name: np.ascontiguousarray(np.asarray(a)) for name, a in arrays.items()}
    if "__header__" in payload:
        raise ValueError("array name '__header__' is reserved")
    payload["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            np.savez(stream, **payload)

    return atomic_write(path, write)


def load_container(
    path: str | os.PathLike, kind: str | tuple[str, ...] | None = None
) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """Read a psfmap file; return ``(kind, arrays, metadata)``.

    Raises ``ValueError``, in one sentence, for a missing, truncated, corrupted (a changed
    byte fails the archive's CRC-32 checks) or foreign file, an array of something other than
    numbers, an archive larger than the memory available, an unexpected kind, or a format
    version newer than this version of psfmap understands.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"psfmap file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # a text or image file: say so, not NumPy's pickle hint
        raise ValueError(f"{str(path)!r} is not a readable psfmap file (not a NumPy .npz "
                         "archive, or a truncated one)")
    try:
        with zipfile.ZipFile(path) as archive:  # sizes claimed by the headers, before reading
            problem = memory_problem(sum(_claimed_bytes(archive, info)
                                         for info in archive.infolist()))
        if problem is not None:
            raise _Refused(f"{str(path)!r} {problem} (a corrupted or forged psfmap file)")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except _Refused as error:
        raise ValueError(str(error)) from None
    except Exception as error:  # zipfile, zlib, numpy's header parser and reader: many types
        raise ValueError(f"{str(path)!r} is not a readable psfmap file (corrupted or "
                         f"truncated archive: {_reason(error)})") from None
    raw = arrays.pop("__header__", None)
    if raw is None:
        raise ValueError(f"{str(path)!r} is not a psfmap file (no header)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(f"{str(path)!r} has a corrupted psfmap header") from None
    if not isinstance(header, dict) or not isinstance(header.get("metadata", {}), dict):
        raise ValueError(f"{str(path)!r} has a corrupted psfmap header (not a JSON object)")
    if header.get("format") != FORMAT_NAME:
        raise ValueError(f"{str(path)!r} is not a psfmap file")
    check_version(header.get("version", 0), FORMAT_VERSION, path, "psfmap format")
    found = header.get("kind")
    allowed = (kind,) if isinstance(kind, str) else kind
    if allowed is not None and found not in allowed:
        raise ValueError(
            f"{str(path)!r} holds a {_short(found)}, expected {' or '.join(map(repr, allowed))}"
        )
    for name, array in arrays.items():
        if array.dtype.kind not in "biufc" or array.dtype.fields is not None:
            raise ValueError(f"{str(path)!r} is corrupted: its array {_short(name)} holds "
                             f"{array.dtype} values, expected numbers")
        if not array.dtype.isnative:  # torch reads native byte order only
            arrays[name] = array.astype(array.dtype.newbyteorder("="))
    return found, arrays, header.get("metadata", {})


def _claimed_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Bytes NumPy will allocate for one archive member: the larger of its size in the zip
    directory and the shape × itemsize its ``.npy`` header claims (either can be forged)."""
    from numpy.lib import format as npy

    claimed = 0
    if info.filename.endswith(".npy"):
        with archive.open(info) as member:
            version = npy.read_magic(member)
            if version in ((1, 0), (2, 0)):
                read = npy.read_array_header_1_0 if version == (1, 0) else \
                    npy.read_array_header_2_0
                shape, _, dtype = read(member)
                claimed = math.prod(int(n) for n in shape) * dtype.itemsize
    return max(info.file_size, claimed)


class _Refused(Exception):
    """A load refused before reading, already described in one sentence."""


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a forged header can hold anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(error: BaseException) -> str:
    """One short, printable line from a reader's exception. NumPy's refusal of object arrays
    suggests ``allow_pickle=True``, which must never be done with a damaged file: say what
    the file holds instead."""
    text = str(error).strip()
    if "pickle" in text.lower():
        return "it holds Python objects, not arrays of numbers"
    line = text.splitlines()[0] if text else type(error).__name__
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line if len(line) <= 100 else line[:99] + "…"
