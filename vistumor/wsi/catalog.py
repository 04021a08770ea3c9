"""Finding slides and their annotations, by one rule for every stage (tiling, whole-slide
inference, evaluation, the viewer).

The rule: a slide's name is its file stem, and names match **ignoring case**: slide
``Tumor_001.tif`` takes the annotation ``tumor_001.xml``. Two files that would be one name
(``a.tif`` and ``a.TIF``, or annotations ``a.xml`` and ``A.xml``) are refused in one line
naming both, before anything is run: one would silently overwrite the other's results.
A slide with annotations of several formats takes the first of :data:`ANNOTATION_SUFFIXES`
(a reviewed slide has both ``.geojson`` and ``.xml``, which hold the same outlines).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vistumor.errors import ConfigError
from vistumor.wsi.slide import SLIDE_SUFFIXES

#: lesion annotation files, in order of preference when a slide has several
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")


def slide_name(path: str | Path) -> str:
    """The key a file matches by: its lower-case stem."""
    return Path(path).stem.lower()


def check_distinct(paths: Iterable[Path], where: str | Path | None = None) -> list[Path]:
    """``paths``, after refusing two of one slide name (:func:`slide_name`) in one line naming both."""
    seen: dict[str, Path] = {}
    paths = list(paths)
    for path in paths:
        other = seen.setdefault(slide_name(path), path)
        if other != path:
            raise ConfigError(f"{other} and {path} are both slide '{other.stem}' "
                              "(slide names match ignoring case)", where)
    return paths


def slide_files(given: Sequence[str | Path]) -> list[Path]:
    """Slide files, or folders searched (not recursively) for files with one of
    :data:`~vistumor.wsi.slide.SLIDE_SUFFIXES` (in any case); in the given order, a folder's
    files sorted by name. Refuses a missing path and two files of one slide name."""
    files: list[Path] = []
    for entry in given:
        path = Path(entry)
        if path.is_dir():
            files += sorted((p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file()
                             and not p.name.startswith(".")), key=lambda p: p.name)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError("slide file or folder not found", path)
    if not files:
        raise ConfigError(f"no slide files ({', '.join(SLIDE_SUFFIXES)}) in {[str(p) for p in given]}")
    return check_distinct(files)


def locate_slides(folder: str | Path, names: Iterable[str]) -> dict[str, Path]:
    """The slide file of each of ``names`` found under ``folder`` (sub-folders too): a file with
    one of :data:`~vistumor.wsi.slide.SLIDE_SUFFIXES` whose stem is the name, ignoring case.
    Names not found are left out; two candidates for one name are refused in one line naming both."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("folder not found", folder)
    wanted = {name.lower(): name for name in names}
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")) if wanted else []:
        key = slide_name(path)
        if key in wanted and path.suffix.lower() in SLIDE_SUFFIXES and path.is_file():
            if key in found:
                raise ConfigError(f"{found[key]} and {path} are both slide '{wanted[key]}' "
                                  "(slide names match ignoring case)", folder)
            found[key] = path
    return {wanted[key]: path for key, path in found.items()}


def glob_slides(root: str | Path, globs: Mapping[str, str | Sequence[str]]) -> list[tuple[str, Path]]:
    """``(kind, file)`` of every file the ``kind -> glob patterns`` of a data layout match under
    ``root`` (hidden files skipped), sorted by slide name; refuses two files of one slide name
    (within or across kinds) and a missing ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("data folder not found", root)
    found: dict[Path, str] = {}
    for kind, patterns in globs.items():
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            for path in sorted(root.glob(pattern)):
                if path.is_file() and not path.name.startswith("."):
                    found.setdefault(path, kind)
    paths = check_distinct(sorted(found, key=lambda p: (slide_name(p), str(p))), root)
    return [(found[p], p) for p in paths]


def index_folder(folder: str | Path, suffixes: Sequence[str] = ANNOTATION_SUFFIXES,
                 strip: str = "") -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes`` (any case), by slide name (``strip``
    removed from its end, e.g. ``_mask`` of ``test_001_Mask.tif``); of one slide's files of
    different suffixes, the earlier in ``suffixes``. Two files of one slide name and suffix
    are refused in one line naming both."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("folder not found", folder)
    order = [s.lower() for s in suffixes]
    chosen: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        suffix = path.suffix.lower()
        if suffix not in order or not path.is_file() or path.name.startswith("."):
            continue
        key = slide_name(path)
        key = key[: -len(strip)] if strip and key.endswith(strip.lower()) else key
        other = chosen.get(key)
        if other is not None and other.suffix.lower() == suffix:
            raise ConfigError(f"{other.name} and {path.name} are both slide '{key}' "
                              "(names match ignoring case)", folder)
        if other is None or order.index(suffix) < order.index(other.suffix.lower()):
            chosen[key] = path
    return chosen


class Annotations:
    """A folder of ``<slide><suffix>`` annotation files, indexed once (at first use).

    ``Annotations(folder).find("Tumor_001")`` is ``folder/tumor_001.xml`` when that exists.
    A missing folder finds nothing (every slide is then without an annotation).
    """

    def __init__(self, folder: str | Path | None, suffixes: Sequence[str] = ANNOTATION_SUFFIXES):
        self.folder = Path(folder) if folder is not None else None
        self.suffixes = tuple(suffixes)
        self._index: dict[str, Path] | None = None

    def find(self, slide_id: str) -> Path | None:
        """The annotation of slide ``slide_id`` (matched ignoring case), or None."""
        if self.folder is None or not self.folder.is_dir():
            return None
        if self._index is None:
            self._index = index_folder(self.folder, self.suffixes)
        return self._index.get(slide_id.lower())


def find_annotation(folder: str | Path | None, slide_id: str,
                    suffixes: Sequence[str] = ANNOTATION_SUFFIXES) -> Path | None:
    """The annotation of one slide in ``folder`` by the catalog's rule (for many slides of one
    folder, :class:`Annotations` indexes it once)."""
    return Annotations(folder, suffixes).find(slide_id)
