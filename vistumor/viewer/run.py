"""An inference run folder, as the viewer sees it: its slides, models, maps, lesions and
evaluation, each looked up by name (never by a path from a request).

Every file served comes from here: a slide the run names (``run.json`` ``slides``), or a
file under the run folder built from a known model name, a known slide name and a fixed
suffix; anything else is :class:`NotFound`. Tables and the evaluation are read again when
their file changes (a rerun of ``merge`` or the evaluation stage while the viewer is up).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from vistumor.errors import AnnotationError, VisTumorError
from vistumor.evaluate.camelyon16 import report
from vistumor.wsi.annotations import read_annotations
from vistumor.wsi.catalog import locate_slides
from vistumor.wsi.geojson import read_geojson

log = logging.getLogger(__name__)

#: the heatmap layers: name -> (folder under the model, what the values are)
LAYERS = {"probability": "heatmaps", "cam": "cams"}
RUN_SUFFIXES = {"sidecar": ".json", "map": ".npy", "lesions": ".geojson", "figure": ".png"}


class NotFound(LookupError):
    """A name, level or coordinate the run does not have (HTTP 404)."""


def safe_name(name: str) -> bool:
    """A name that cannot leave a folder: no separators, no ``..``, no NUL, not empty."""
    return bool(name) and name.strip() == name and not any(c in name for c in "/\\\x00") and ".." not in name


@dataclass(frozen=True)
class SlideEntry:
    """A slide of the run: its name, file (None when not found), label, annotation, and the
    path ``run.json`` gives."""

    name: str
    path: Path | None
    label: str | None
    annotation: Path | None
    recorded: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A model of the run and its folder ``RUN/models/<name>``."""

    name: str
    checkpoint: str
    input_size: int | None
    folder: Path
    groups: dict[str, str] | None


class RunFolder:
    """An inference run folder (``run.json``, ``models/<name>/...``), read-only."""

    def __init__(self, root: str | Path, slides: str | Path | None = None):
        """The run in ``root``; slide files missing from where ``run.json`` says are looked
        for under ``slides`` (when given) by name: :func:`relocate`."""
        self.root = Path(root).resolve()
        described = self.root / "run.json"
        if not described.is_file():
            raise VisTumorError("not an inference run folder (no run.json); run infer.py first", self.root)
        try:
            self.description = json.loads(described.read_text())
        except json.JSONDecodeError as err:
            raise VisTumorError(f"run.json is not valid JSON ({err})", described) from err
        bases = _bases(self.root)
        self.slides = _slides(self.description.get("slides") or [], bases)
        if slides is not None:
            self.slides = relocate(self.slides, Path(slides))
        for entry in self.slides.values():
            if entry.path is None:
                log.warning("slide %s: file %s not found%s", entry.name, entry.recorded,
                            f" (nor under {slides})" if slides is not None else
                            " (moved? --slides DIR finds it by name)")
        self.models = _models(self.description.get("models") or [], self.root)
        self.settings = self.description.get("settings") or {}
        self._cache: dict[Path, tuple[int, Any]] = {}

    # -- lookups ---------------------------------------------------------------------------

    def slide(self, name: str) -> SlideEntry:
        if name not in self.slides:
            raise NotFound(f"no slide {name!r} in this run")
        return self.slides[name]

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise NotFound(f"no model {name!r} in this run")
        return self.models[name]

    def file(self, model: str, kind: str, slide: str, suffix: str) -> Path:
        """``RUN/models/<model>/<kind>/<slide><suffix>`` of a known model and slide, if it exists."""
        folder = self.model(model).folder / kind
        path = folder / f"{self.slide(slide).name}{suffix}"
        if not path.resolve().is_relative_to(self.root) or not path.is_file():
            raise NotFound(f"{model}/{kind}/{slide}{suffix} not found")
        return path

    def layer_files(self, model: str, layer: str, slide: str) -> tuple[Path, dict[str, Any]]:
        """A heatmap layer's ``.npy`` and its sidecar."""
        if layer not in LAYERS:
            raise NotFound(f"no layer {layer!r}; layers are {sorted(LAYERS)}")
        values = self.file(model, LAYERS[layer], slide, RUN_SUFFIXES["map"])
        sidecar = self._read(self.file(model, LAYERS[layer], slide, RUN_SUFFIXES["sidecar"]), _json)
        return values, sidecar

    # -- what the pages show ----------------------------------------------------------------

    def table(self, model: str) -> dict[str, dict[str, Any]]:
        """The model's ``slides.csv`` by slide (empty when not merged yet)."""
        path = self.model(model).folder / "slides.csv"
        return self._read(path, _csv_rows) if path.is_file() else {}

    def status(self) -> dict[str, dict[str, Any]]:
        path = self.root / "status.csv"
        return self._read(path, _csv_rows) if path.is_file() else {}

    def evaluation(self, model: str) -> dict[str, Any] | None:
        """``models/<model>/evaluation/evaluation.json``, or None when not evaluated."""
        path = self.model(model).folder / report.FOLDER / report.FILES["json"]
        if not path.is_file():
            return None
        try:
            return self._read(path, _json)
        except (OSError, ValueError):
            log.warning("unreadable evaluation %s", path, exc_info=True)
            return None

    def lesions(self, model: str, slide: str) -> list[dict[str, Any]]:
        """Predicted lesions: ``{id, rings, tumor_probability, mean_probability, area_mm2}``,
        read by the annotation reader (:func:`~vistumor.wsi.geojson.read_geojson`); rings are
        every outline and hole, part by part, in level-0 px."""
        try:
            path = self.file(model, "lesions", slide, RUN_SUFFIXES["lesions"])
        except NotFound:
            return []
        out = []
        for i, shape in enumerate(self._read(path, read_geojson), 1):
            measured = shape.properties.get("measurements") or {}
            out.append({"id": shape.id or f"lesion {i}", "rings": [[[x, y] for x, y in ring] for ring in shape.rings],
                        **{k: measured.get(k) for k in ("tumor_probability", "mean_probability", "area_mm2")}})
        return out

    def truth(self, slide: str) -> list[list[list[float]]]:
        """The ground-truth tumor outline (exclusions cut out) as rings in level-0 px."""
        entry = self.slide(slide)
        if entry.annotation is None:
            return []
        groups = next((m.groups for m in self.models.values() if m.groups), None)
        try:
            annotation = self._read(entry.annotation, lambda p: read_annotations(p, groups))
        except AnnotationError:
            log.warning("cannot read the annotation of %s", slide, exc_info=True)
            return []
        return [[[round(float(x), 2), round(float(y), 2)] for x, y in ring.coords]
                for polygon in annotation.polygons for ring in (polygon.exterior, *polygon.interiors)]

    def _read(self, path: Path, loader: Callable[[Path], Any]) -> Any:
        """``loader(path)``, cached until the file changes."""
        stamp = os.stat(path).st_mtime_ns
        cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, loader(path))
            self._cache[path] = cached
        return cached[1]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _csv_rows(path: Path) -> dict[str, dict[str, Any]]:
    with open(path, newline="") as f:
        return {row["slide"]: {k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)}


def _value(text: str | None) -> Any:
    """A CSV cell as a number when it is one (NaN as None), else the text."""
    if text is None or text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return None if math.isnan(number) else number


def _bases(root: Path) -> list[Path]:
    """Where a relative path in ``run.json`` may be relative to: the working directory, the
    run's own (Hydra records it in ``.hydra/hydra.yaml``), the run folder."""
    bases = [Path.cwd()]
    hydra = root / ".hydra" / "hydra.yaml"
    if hydra.is_file():
        try:
            cwd = ((yaml.safe_load(hydra.read_text()) or {}).get("hydra") or {}).get("runtime", {}).get("cwd")
        except yaml.YAMLError:
            cwd = None
        if cwd:
            bases.append(Path(cwd))
    return [*bases, root]


def _locate(given: str | None, bases: list[Path]) -> Path | None:
    if not given:
        return None
    path = Path(given)
    candidates = [path] if path.is_absolute() else [base / path for base in bases]
    return next((c.resolve() for c in candidates if c.is_file()), None)


def _named(described: list[dict], key: str) -> Iterator[tuple[str, dict]]:
    """``(name, item)`` of run.json entries whose ``key`` is a plain name (others skipped, logged)."""
    for item in described:
        name = str(item.get(key, ""))
        if safe_name(name):
            yield name, item
        else:
            log.warning("run.json: %s %r skipped (not a plain name)", key, name)


def _slides(described: list[dict], bases: list[Path]) -> dict[str, SlideEntry]:
    slides = {}
    for name, item in _named(described, "slide"):
        slides[name] = SlideEntry(name, _locate(item.get("path"), bases), item.get("label"),
                                  _locate(item.get("annotation"), bases), item.get("path"))
    return slides


def relocate(slides: dict[str, SlideEntry], folder: Path) -> dict[str, SlideEntry]:
    """``slides`` with each missing file found under ``folder`` (sub-folders too) by the slide
    catalog's rule (:func:`~vistumor.wsi.catalog.locate_slides`: the stem is the slide's name,
    ignoring case). A file found where ``run.json`` says is kept; two candidates for one slide
    are refused in one line naming both."""
    try:
        found = locate_slides(folder, [name for name, entry in slides.items() if entry.path is None])
    except VisTumorError as err:
        raise VisTumorError(f"--slides: {err}") from err
    return {name: replace(entry, path=found[name].resolve()) if name in found else entry
            for name, entry in slides.items()}


def _models(described: list[dict], root: Path) -> dict[str, ModelEntry]:
    models = {}
    for name, item in _named(described, "name"):
        groups = ((item.get("tiling") or {}).get("labels") or {}).get("annotation_groups")
        models[name] = ModelEntry(name, str(item.get("checkpoint", "")), item.get("input_size"),
                                  root / "models" / name, dict(groups) if groups else None)
    return models
