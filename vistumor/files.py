"""Atomic writes, locks and file fingerprints: an interrupted run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from vistumor.errors import VisTumorError
from vistumor.labels import parse_label

_FAST_BLOCK = 1 << 20  # bytes hashed at each of the sampled offsets
_FAST_SAMPLES = 16


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are ordinary, readable files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(path: str | Path) -> int:
    """Delete the leftovers of interrupted :func:`atomic_path` writes of ``path`` (a process
    killed with ``kill -9`` never ran its cleanup); returns how many were removed."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block; another process
    or thread asking for the same lock waits (``filelock``: POSIX and Windows alike)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure atomically, in the format its suffix names (default PNG)."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str | Path, mode: str = "fast") -> str:
    """A checksum that tells whether a slide changed.

    ``full`` hashes every byte (minutes for a CAMELYON16 download); ``fast`` hashes the size
    and 16 evenly spaced 1 MiB blocks (head and tail included), which catches any re-scan,
    re-export or truncation at a fraction of the cost.
    """
    if mode == "full":
        return "sha256:" + sha256_file(path)
    if mode != "fast":
        raise ValueError(f"checksum mode must be 'fast' or 'full', got {mode!r}")
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FAST_BLOCK * _FAST_SAMPLES:
            digest.update(f.read())
        else:
            for i in range(_FAST_SAMPLES):
                f.seek((size - _FAST_BLOCK) * i // (_FAST_SAMPLES - 1))
                digest.update(f.read(_FAST_BLOCK))
    return "fast-sha256:" + digest.hexdigest()


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file, a leading byte-order mark dropped (Excel's "CSV UTF-8" writes
    one); another encoding is one line naming the file and the first byte that is not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise VisTumorError("file not found", path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise VisTumorError(f"not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}); "
                            "save it as UTF-8", path) from None


def read_slide_table(path: str | Path, column: str, parse: Callable[[str], Any], expected: str,
                     extra: tuple[str, ...] = ()) -> list[tuple[int, str, Any, dict[str, str]]]:
    """The rows of a ``slide,<column>`` CSV (reference labels, scores, patients) as
    ``(row number, slide, parse(value), {extra column: cell})``, in file order.

    The header is optional when the first row's second cell is already a value (a label or a
    number: the official ``reference.csv`` has none); extra columns are ignored; blank rows
    skipped. A row without a slide, a value ``parse`` refuses (None) or a slide listed twice
    (names match case-insensitively) is an error naming the row (``expected`` says what a row holds).
    """
    path = Path(path)
    rows = [row for row in csv.reader(io.StringIO(read_text(path), newline="")) if any(c.strip() for c in row)]
    if not rows:
        raise VisTumorError("empty table", path)
    header = [cell.strip().lower() for cell in rows[0]]
    if "slide" in header and column in header:
        columns, numbered = {name: header.index(name) for name in header}, list(enumerate(rows, 1))[1:]
    elif len(header) >= 2 and (parse_label(header[1]) is not None or _is_number(header[1])):
        columns, numbered = {name: i for i, name in enumerate(("slide", column))}, list(enumerate(rows, 1))
    else:
        raise VisTumorError(f"expected columns slide, {column}; got {rows[0]}", path)

    def cell(row: list[str], name: str) -> str:
        index = columns.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    found, seen = [], set()
    for number, row in numbered:
        slide, raw = cell(row, "slide"), cell(row, column)
        value = parse(raw) if raw else None
        if not slide or value is None:
            raise VisTumorError(f"row {number}: expected {expected}, got {row}", path)
        if slide.lower() in seen:
            raise VisTumorError(f"row {number}: slide '{slide}' is listed twice", path)
        seen.add(slide.lower())
        found.append((number, slide, value, {name: cell(row, name) for name in extra}))
    return found


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
