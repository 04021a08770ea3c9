"""A synthetic training set in the CAMELYON16 layout, with a resumable record (``synthetic.json``).

The record holds the generating parameters and one entry per finished slide; it is rewritten
after every slide, so a rerun with the same parameters renders only what is missing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from vistumor.errors import ConfigError
from vistumor.files import write_text
from vistumor.synthetic.slide import KIND_CODES, check_args, generate_slide
from vistumor.synthetic.stages import MIN_SIDE_MM, MPP, SIZE, category_of, node_name, side_mm

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
_REGENERATE = (
    "regenerate with --overwrite (python -m vistumor.synthetic) or data.generate.overwrite=true (Hydra)"
)


@dataclass(frozen=True)
class _Job:
    path: Path
    kind: str
    seed: tuple[int, int, int]
    annotation: Path | None
    with_exclusion: bool
    category: str | None = None

    @property
    def files(self) -> list[Path]:
        return [self.path] + ([self.annotation] if self.annotation else [])


#: CAMELYON16's two layouts: training slides named by kind in per-kind folders; test slides
#: named ``test_NNN`` in one folder (kinds shuffled), their labels in ``testing/reference.csv``
LAYOUTS = ("training", "testing")
_TEST_SEED = 10  # added to the kind code: test slides never repeat a training slide


def _plan(root: Path, n_normal: int, n_tumor: int, seed: int, layout: str = "training",
          categories: bool = False) -> list[_Job]:
    """CAMELYON16 layout; each slide's seed is (seed, kind code, index). With ``categories``,
    tumor slide ``i`` is drawn for metastasis category :func:`~.stages.category_of` ``(i)``."""
    if layout == "testing":
        return _plan_testing(root, n_normal, n_tumor, seed, categories)
    jobs = []
    for kind, count in (("normal", n_normal), ("tumor", n_tumor)):
        for index in range(1, count + 1):
            name = f"{kind}_{index:03d}"
            xml = root / "training" / "lesion_annotations" / f"{name}.xml" if kind == "tumor" else None
            jobs.append(
                _Job(
                    root / "training" / kind / f"{name}.tif",
                    kind,
                    (seed, KIND_CODES[kind], index),
                    xml,
                    kind == "tumor" and index == 1,
                    category_of(index) if categories and kind == "tumor" else None,
                )
            )
    return jobs


def _plan_testing(root: Path, n_normal: int, n_tumor: int, seed: int, categories: bool = False) -> list[_Job]:
    """Test slides ``test_NNN``; with ``categories``, CAMELYON17's patients instead: the shuffled
    slides, five at a time, are the nodes of a patient (``patient_000_node_0`` ...)."""
    kinds = ["normal"] * n_normal + ["tumor"] * n_tumor
    order = np.random.default_rng(seed).permutation(len(kinds))
    jobs = []
    for number, i in enumerate(order, 1):
        kind, name = kinds[i], node_name(number) if categories else f"test_{number:03d}"
        index = int(i + 1 if kinds[i] == "normal" else i - n_normal + 1)
        xml = root / "testing" / "lesion_annotations" / f"{name}.xml" if kind == "tumor" else None
        category = category_of(index) if categories and kind == "tumor" else None
        jobs.append(_Job(root / "testing" / "images" / f"{name}.tif", kind,
                         (seed, KIND_CODES[kind] + _TEST_SEED, index), xml, kind == "tumor" and index == 1, category))
    return jobs


def write_reference(root: Path, jobs: list[_Job]) -> Path:
    """``testing/reference.csv`` as CAMELYON16 ships it: ``name,Tumor|Normal`` rows, no header."""
    path = root / "testing" / "reference.csv"
    rows = sorted((job.path.stem, job.kind.capitalize()) for job in jobs)
    write_text(path, "".join(f"{name},{kind}\n" for name, kind in rows))
    return path


def _run_job(job: _Job, size: int, mpp: float) -> dict:
    log.info("rendering %s", job.path.name)
    return generate_slide(job.path, job.kind, size, mpp, job.seed, job.annotation, job.with_exclusion,
                          job.category)


def _run_job_in_worker(job: _Job, size: int, mpp: float) -> dict:
    cv2.setNumThreads(1)  # one slide per process; the pool already fills the cores
    return _run_job(job, size, mpp)


def _render(
    jobs: list[_Job], size: int, mpp: float, workers: int, finished: Callable[[_Job, dict], None]
) -> None:
    """Render ``jobs``, in "spawn" worker processes when ``workers > 1``; report each as it ends."""
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_job_in_worker, job, size, mpp): job for job in jobs}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    else:
        for job in jobs:
            finished(job, _run_job(job, size, mpp))


# -- the record -----------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"not a readable synthetic-dataset record ({err}); {_REGENERATE}", path) from err
    if not isinstance(record, dict):
        raise ConfigError(f"not a synthetic-dataset record (a JSON object); {_REGENERATE}", path)
    return record


def _write_manifest(path: Path, record: dict) -> None:
    text = json.dumps(record, indent=1) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    write_text(path, text)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _manifest_entry(job: _Job, meta: dict, root: Path) -> dict:
    """Slide metadata for synthetic.json (outline coordinates stay in the XML)."""
    outlines = [{k: v for k, v in o.items() if k != "coordinates"} for o in meta["outlines"]]
    return {
        "path": _relative(job.path, root),
        "annotation": _relative(job.annotation, root) if job.annotation else None,
        "seed": list(job.seed),
        **{k: v for k, v in meta.items() if k != "outlines"},
        "outlines": outlines,
    }


def _check_root(root: Path, params: dict, old: dict | None, jobs: list[_Job], overwrite: bool) -> None:
    """Refuse to mix slides of different parameters (or foreign files) unless overwriting."""
    if old is None:
        present = sorted(p for layout in LAYOUTS for p in (root / layout).glob("*/*")
                         if p.suffix in (".tif", ".xml"))
        if present and not overwrite:
            raise ConfigError(
                f"holds slides ({present[0].name}, ...) but no {MANIFEST}, so they are not ours; "
                f"{_REGENERATE} to replace them, or use another root",
                root,
            )
        return
    old_params = old.get("params") or {}
    if old_params == params:
        return
    changed = {k: (old_params.get(k), v) for k, v in params.items() if old_params.get(k) != v}
    if not overwrite:
        raise ConfigError(_clash_message(changed), root / MANIFEST)
    keep = {job.path for job in jobs} | {job.annotation for job in jobs}
    for entry in old.get("slides", []):
        for rel in (entry.get("path"), entry.get("annotation")):
            if rel and (root / rel) not in keep:
                (root / rel).unlink(missing_ok=True)


def _clash_message(changed: dict) -> str:
    """Why a present dataset does not fit the request: another generator, or other parameters."""
    if set(changed) == {"generator_version"}:
        old, new = changed["generator_version"]
        return (
            f"dataset was written by synthetic generator version {old}, this is version {new} "
            f"(the parameters are otherwise the same), so its slides are not what this version draws; "
            f"{_REGENERATE}, or use another root"
        )
    return (
        f"dataset was generated with other parameters (old, new): {changed}; "
        f"{_REGENERATE}, or use another root"
    )


# -- the dataset ----------------------------------------------------------------------------


def _check_request(root: Path, n_normal: int, n_tumor: int, size: int, mpp: float, categories: bool = False) -> None:
    if n_normal < 0 or n_tumor < 0 or n_normal + n_tumor == 0:
        raise ConfigError(f"need some slides, got n_normal={n_normal}, n_tumor={n_tumor}", root)
    for kind, count in (("normal", n_normal), ("tumor", n_tumor)):
        if count:
            check_args(root, kind, size, mpp)
    if categories and n_tumor and side_mm(size, mpp) < MIN_SIDE_MM:
        raise ConfigError(
            f"categories need slides of at least {MIN_SIDE_MM:g} mm a side for a > 2 mm macro-metastasis; "
            f"size={size} at mpp={mpp} is {side_mm(size, mpp):.3g} mm: e.g. size={SIZE} mpp={MPP}", root
        )


def generate_dataset(
    root: str | Path,
    n_normal: int = 6,
    n_tumor: int = 6,
    size: int = 6144,
    mpp: float = 0.25,
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    layout: str = "training",
    categories: bool = False,
) -> list[Path]:
    """Write a synthetic CAMELYON16-like training set under ``root``; return the slide paths.

    The parameters and per-slide metadata are recorded in ``<root>/synthetic.json``,
    updated after every slide. A rerun with the same parameters renders only what is
    missing, so an interrupted run resumes (files are written atomically: a present file
    is complete). ``overwrite`` regenerates every slide and deletes those of the old
    record that are no longer planned. A slide depends only on (seed, kind, index), size
    and mpp: not on ``workers`` or on the slide counts. ``workers > 1`` renders slides in
    "spawn" processes, so a calling script needs the usual ``if __name__ == "__main__":`` guard.

    ``layout="testing"`` writes the CAMELYON16 test layout instead (``testing/images/test_NNN.tif``,
    kinds shuffled, ``testing/reference.csv``), with seeds no training slide uses.

    ``categories=True`` draws each tumor slide for a metastasis category, cycling macro,
    micro, ITC, with lesions sized in mm (:mod:`.stages`; slides of at least 7 mm a side, e.g.
    8192 px at 1.0 µm/px); in the test layout the slides are then CAMELYON17's patients, five
    nodes each (``patient_000_node_0.tif`` ...). It is recorded in the parameters only when used.

    Raises:
        ConfigError: impossible arguments; or, unless ``overwrite``, a root holding slides
            of other parameters or another generator version, slides without a record,
            or an unreadable record.
    """
    root = Path(root)
    _check_request(root, n_normal, n_tumor, size, mpp, categories)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}", root)
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_normal": n_normal,
        "n_tumor": n_tumor,
        "size": size,
        "mpp": mpp,
        "seed": seed,
        **({"layout": layout} if layout != "training" else {}),  # (training records stay as they were)
        **({"categories": True} if categories else {}),  # (as do records without categories)
    }
    jobs = _plan(root, n_normal, n_tumor, seed, layout, categories)
    old = _read_manifest(root / MANIFEST)
    _check_root(root, params, old, jobs, overwrite)
    for job in jobs:
        for path in job.files:
            path.parent.mkdir(parents=True, exist_ok=True)
    same = old is not None and old.get("params") == params
    entries = {e["path"]: e for e in old.get("slides", [])} if same and not overwrite else {}
    todo = [
        job
        for job in jobs
        if _relative(job.path, root) not in entries or not all(p.exists() for p in job.files)
    ]
    log.info("%s: %d slides to render, %d already present", root, len(todo), len(jobs) - len(todo))

    def record(complete: bool) -> None:
        slides = [entries[rel] for rel in (_relative(j.path, root) for j in jobs) if rel in entries]
        _write_manifest(root / MANIFEST, {"params": params, "complete": complete, "slides": slides})

    def finished(job: _Job, meta: dict) -> None:
        entries[_relative(job.path, root)] = _manifest_entry(job, meta, root)
        record(complete=False)

    record(complete=not todo)
    _render(todo, size, mpp, workers, finished)
    if layout == "testing":
        write_reference(root, jobs)
    record(complete=True)
    return [job.path for job in jobs]
