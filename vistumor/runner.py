"""The per-slide job runner every slide-by-slide stage shares (tiling, whole-slide inference,
bag extraction): status records, locks, resume, leftovers of killed runs, progress, shards
and the merge of the status records (CLAM's ``process_list_autogen.csv``, made resumable).

A stage describes its unit of work as a :class:`SlideJob` and hands the runner its slides::

    class BagJob(SlideJob):
        status_dir = "status"                        # out/status/<slide>.json
        def key(self, item):                         # what makes a result current
            return {"settings_hash": ..., "slide_checksum": fingerprint(item.path)}
        def run(self, item):                         # the work; writes outputs atomically
            ...                                      # (vistumor.files.atomic_path)
            return {"patches": n}                    # facts kept in the status record
        def outputs(self, item):                     # every file the slide may leave
            return [self.out / "bags" / f"{item.slide_id}.h5"]

    settings = build(RunSettings, values, "run").check_stage("extract", "run")
    records = run_slides(items, BagJob(...), settings, out)   # this shard's slides
    if settings.merges:
        statuses = merge_records(items, job, out, records)     # every slide: done/failed/pending
    log.info(counts_line(counts(records)))                     # "done 5, skipped 2, failed 1"

An entry script ends with exit status 1 when a slide failed (:func:`vistumor.cli.run_task`
reads the summary's ``failed``), so put ``counts(records)`` into the task's summary.

What the runner guarantees, per slide (``item`` has a ``slide_id`` and a ``path``):

- **skip if done**: a slide whose record says ``done`` with the same :meth:`SlideJob.key` and
  whose :meth:`SlideJob.complete` outputs all exist is reported ``skipped`` and not touched;
- **one worker per slide**: ``out/locks/<slide>.lock`` (filelock: POSIX and Windows) is held
  while a slide is looked at; two runs on one folder take turns and the second skips;
- **failures stay alone**: a :class:`~vistumor.errors.VisTumorError` or any crash in
  :meth:`SlideJob.run` becomes ``failed`` with a one-line reason naming the slide; the slide's
  outputs are removed, the other slides go on, and a rerun retries it;
- **no leftovers**: temporaries of writes a killed run left behind (``.<name>.*.tmp`` beside
  each output and the record) are removed before the slide is looked at; the record is
  written last and atomically, so its presence means the slide is finished (or failed);
- **shards**: :meth:`RunSettings.mine` is a round-robin share of the sorted slide list, so
  ``num_shards`` array jobs cover every slide once; :func:`merge_records` then merges the records.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tqdm import tqdm

from vistumor.errors import ConfigError, VisTumorError
from vistumor.files import exclusive, remove_temporaries, write_json

log = logging.getLogger(__name__)

DONE, SKIPPED, FAILED, PENDING = "done", "skipped", "failed", "pending"
#: what a slide of a run ends as
ENDINGS = (DONE, SKIPPED, FAILED)
#: ``stage`` values besides the stage's own work stage (``tile``, ``infer``, ...)
ALL, MERGE = "all", "merge"

Item = TypeVar("Item")


@dataclass(frozen=True)
class RunSettings:
    """How a stage's slides are run (``tiling.run``, infer's ``run``); never changes a result.

    Attributes:
        workers: slides run in parallel processes (the job must pickle).
        shard_index, num_shards: this job's share of the slide list (cluster array jobs).
        stage: ``all`` (this shard's slides, then the merge when unsharded), the stage's work
            stage (``tile``, ``infer``, ...: this shard's slides only) or ``merge`` (only the merge).
        strict: the merge refuses to make the stage's global output when a slide failed.
        progress: show a progress bar.
    """

    workers: int = 1
    shard_index: int = 0
    num_shards: int = 1
    stage: str = ALL
    strict: bool = False
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be a whole number >= 1, got {self.workers!r}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"shard_index={self.shard_index} must be in [0, num_shards={self.num_shards})")

    def check_stage(self, work: str, where: str) -> RunSettings:
        """Self, after checking ``stage`` is ``all``, ``work`` or ``merge`` (``where``: the config path)."""
        if self.stage not in (ALL, work, MERGE):
            raise ConfigError(f"{where}.stage must be all, {work} or merge, got {self.stage!r}")
        return self

    @property
    def works(self) -> bool:
        """Whether this call runs slides (every stage but ``merge``)."""
        return self.stage != MERGE

    @property
    def merges(self) -> bool:
        """Whether this call merges: ``merge``, or ``all`` when the run is not sharded."""
        return self.stage == MERGE or (self.stage == ALL and self.num_shards == 1)

    def mine(self, items: Sequence[Item]) -> list[Item]:
        """This shard's items: every ``num_shards``-th from ``shard_index`` (round robin)."""
        return list(items[self.shard_index::self.num_shards])


class SlideJob(Generic[Item]):
    """One stage's work on one slide. Subclasses override :meth:`key`, :meth:`run` and
    :meth:`outputs`; the rest has defaults for items with ``slide_id`` and ``path``.

    Jobs run with ``workers > 1`` are pickled into worker processes: keep them plain data.
    """

    #: folder under the run's ``out`` that holds ``<slide>.json`` status records
    status_dir: str = "status"
    #: the record field naming the slide (``slide`` for inference, ``slide_id`` for tiling)
    id_field: str = "slide"
    #: the reasons of a skipped slide and of one not run yet, and the progress bar's label
    skip_reason: str = "already done with these settings"
    pending_reason: str = "not run yet"
    desc: str = "slides"

    def slide_id(self, item: Item) -> str:
        return item.slide_id  # type: ignore[attr-defined]

    def source(self, item: Item) -> Path:
        """The slide file (named by the reason of an unexpected crash)."""
        return Path(item.path)  # type: ignore[attr-defined]

    def describe(self, item: Item) -> dict[str, Any]:
        """What every record of the slide holds, whatever its status."""
        return {self.id_field: self.slide_id(item), "path": str(self.source(item))}

    def key(self, item: Item) -> dict[str, Any]:
        """What the slide's result depends on (settings hash, slide and model checksums); a
        record with another key is redone. Kept in the record."""
        raise NotImplementedError

    def run(self, item: Item) -> dict[str, Any]:
        """Do the work, writing outputs atomically; return facts for the record. Raise a
        :class:`~vistumor.errors.VisTumorError` naming the file for a bad slide."""
        raise NotImplementedError

    def outputs(self, item: Item) -> list[Path]:
        """Every file the slide may leave (cleared of temporaries; removed when it fails)."""
        return []

    def complete(self, item: Item, previous: Mapping[str, Any]) -> bool:
        """Whether a done slide still has its outputs (a deleted file makes it run again)."""
        return all(path.is_file() for path in self.outputs(item))

    def current(self, previous: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
        """Whether a done record was made with ``key``."""
        return all(previous.get(k) == v for k, v in key.items())


# -- one slide ----------------------------------------------------------------------------------


def status_path(out: str | Path, job: SlideJob, slide_id: str) -> Path:
    return Path(out) / job.status_dir / f"{slide_id}.json"


def lock_path(out: str | Path, slide_id: str) -> Path:
    return Path(out) / "locks" / f"{slide_id}.lock"


def read_status(out: str | Path, job: SlideJob, item) -> dict[str, Any]:
    """The slide's saved record, or a ``pending`` one when it has none yet."""
    path = status_path(out, job, job.slide_id(item))
    if path.is_file():
        return json.loads(path.read_text())
    return {**job.describe(item), "status": PENDING, "reason": job.pending_reason}


def run_one(item: Item, job: SlideJob[Item], out: str | Path) -> dict[str, Any]:
    """Run one slide unless an earlier run did (see the module notes); never raises for a
    bad slide. Returns its record (``status`` done, skipped or failed)."""
    slide_id = job.slide_id(item)
    record_path = status_path(out, job, slide_id)
    with exclusive(lock_path(out, slide_id)):
        for path in (*job.outputs(item), record_path):
            remove_temporaries(path)  # left by a run killed mid-write
        start = time.perf_counter()
        record = job.describe(item)
        try:
            key = job.key(item)
            previous = json.loads(record_path.read_text()) if record_path.is_file() else {}
            if previous.get("status") == DONE and job.current(previous, key) and job.complete(item, previous):
                return {**previous, "status": SKIPPED, "reason": job.skip_reason}
            facts = job.run(item)
            record.update(status=DONE, reason="", **key, **facts)
        except VisTumorError as err:
            record.update(status=FAILED, reason=_one_line(str(err)))
        except Exception as err:  # one slide's crash must not stop the run: it is recorded
            log.warning("unexpected error on %s", job.source(item), exc_info=True)
            record.update(status=FAILED, reason=_one_line(f"{job.source(item)}: {type(err).__name__}: {err}"))
        if record["status"] == FAILED:  # no output of this or an earlier run beside a failure
            for path in job.outputs(item):
                path.unlink(missing_ok=True)
        record["seconds"] = round(time.perf_counter() - start, 3)
        write_json(record_path, record)
    return record


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- a run --------------------------------------------------------------------------------------


def run_slides(items: Sequence[Item], job: SlideJob[Item], settings: RunSettings, out: str | Path) -> list[dict]:
    """Run this shard's share of ``items`` (:meth:`RunSettings.mine`) in ``settings.workers``
    processes; returns their records in input order. Refuses, before any slide is run, two
    slides whose names differ only by case (their files would collide on Windows and macOS)."""
    check_unique(job.slide_id(i) for i in items)
    mine = settings.mine(items)
    results: dict[str, dict] = {}
    bar = tqdm(total=len(mine), desc=job.desc, unit="slide", disable=not settings.progress)
    if settings.workers <= 1 or len(mine) <= 1:
        for item in mine:
            results[job.slide_id(item)] = _report(run_one(item, job, out), job, bar)
    else:
        with ProcessPoolExecutor(max_workers=settings.workers) as pool:
            futures = [pool.submit(run_one, item, job, out) for item in mine]
            for future in as_completed(futures):
                record = _report(future.result(), job, bar)
                results[record[job.id_field]] = record
    bar.close()
    return [results[job.slide_id(i)] for i in mine]


def _report(record: dict, job: SlideJob, bar: tqdm) -> dict:
    bar.update(1)
    if record["status"] == FAILED:
        log.warning("failed: %s", record["reason"])
    return record


def check_unique(slide_ids: Iterable[str]) -> None:
    """A :class:`~vistumor.errors.ConfigError` naming two slide names equal but for case."""
    seen: dict[str, str] = {}
    for slide_id in slide_ids:
        other = seen.get(slide_id.lower())
        if other is not None:
            raise ConfigError(f"slides '{other}' and '{slide_id}' have one name (names differ at most by case)")
        seen[slide_id.lower()] = slide_id


def merge_records(items: Sequence[Item], job: SlideJob[Item], out: str | Path,
            records: Sequence[dict] | None = None) -> list[dict]:
    """The merge of a (sharded) run: every slide's record in input order, this call's
    ``records`` where given, else the saved one, else ``pending``."""
    known = {r[job.id_field]: r for r in records or []}
    return [known.get(job.slide_id(i)) or read_status(out, job, i) for i in items]


def counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many slides ended as each of :data:`ENDINGS`."""
    states = [r["status"] for r in records]
    return {state: states.count(state) for state in ENDINGS}


def counts_line(found: Mapping[str, int]) -> str:
    """``done 5, skipped 2, failed 1``."""
    return ", ".join(f"{state} {found.get(state, 0)}" for state in ENDINGS)
