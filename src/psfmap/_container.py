"""One self-describing file format for operators, families and PSF maps.

A psfmap file is a NumPy ``.npz`` archive (no pickle) holding named arrays plus one JSON
header entry ``__header__`` with the format name, the format version, the kind of object and
its metadata (optics, provenance). Loading checks all three and fails with a clear message on
a foreign file, another kind, or a newer format version. Writes are atomic: the archive is
written to a temporary file in the destination folder and renamed over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "psfmap"
FORMAT_VERSION = 1

# (temporary file, target) pairs written inside `deferred_writes`, renamed when it ends well
_DEFERRED: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("deferred", default=None)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the destination folder so the rename is atomic; it is removed
    if ``write`` fails, so a failed write never leaves a partial file behind.
    """
    path = Path(path)
    if not path.parent.exists():
        raise ValueError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; expected a file name")
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
            os.replace(tmp_path, path)
        else:
            pending.append((tmp_path, path))
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def deferred_writes() -> Iterator[None]:
    """All or nothing for a group of writes: inside, :func:`atomic_write` leaves each file
    under its temporary name; when the block ends well they are all renamed into place, and
    when it raises they are all removed, so a failed command changes no file, not even one it
    would have replaced. Files written inside cannot be read back before the block ends."""
    pending: list[tuple[Path, Path]] = []
    token = _DEFERRED.set(pending)
    try:
        yield
    except BaseException:
        for tmp_path, _ in pending:
            tmp_path.unlink(missing_ok=True)
        raise
    else:
        for tmp_path, path in pending:
            os.replace(tmp_path, path)
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

    Raises ``ValueError`` for a missing, corrupted or foreign file, an unexpected kind, or a
    format version newer than this version of psfmap understands.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"psfmap file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # a text or image file: say so, not NumPy's pickle hint
        raise ValueError(f"{str(path)!r} is not a readable psfmap file (not a NumPy .npz "
                         "archive, or a truncated one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a readable psfmap file ({error})") from None
    raw = arrays.pop("__header__", None)
    if raw is None:
        raise ValueError(f"{str(path)!r} is not a psfmap file (no header)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
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
            f"{str(path)!r} holds a {found!r}, expected {' or '.join(map(repr, allowed))}"
        )
    return found, arrays, header.get("metadata", {})
