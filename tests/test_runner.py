"""The per-slide job runner (vistumor/runner.py) on a toy job whose right answers are known:
each "slide" is a text file, its output the text upper-cased; a slide named ``bad*`` fails."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from vistumor.errors import ConfigError, VisTumorError
from vistumor.runner import (
    DONE,
    FAILED,
    PENDING,
    SKIPPED,
    RunSettings,
    SlideJob,
    counts,
    counts_line,
    merge_records,
    run_one,
    run_slides,
)

QUIET = RunSettings(progress=False)


@dataclass(frozen=True)
class Item:
    slide_id: str
    path: Path


@dataclass(frozen=True)
class UpperJob(SlideJob[Item]):
    """out/upper/<slide>.txt = the slide's text upper-cased; ``version`` is the settings."""

    out: Path
    version: int = 1

    def key(self, item):
        return {"version": self.version, "text": item.path.read_text() if item.path.is_file() else None}

    def run(self, item):
        text = item.path.read_text()
        if item.slide_id.startswith("bad"):
            raise VisTumorError("not a slide\n(second line)", item.path)
        if item.slide_id.startswith("crash"):
            raise RuntimeError("libtiff hiccup")
        self.outputs(item)[0].parent.mkdir(parents=True, exist_ok=True)
        self.outputs(item)[0].write_text(text.upper())
        return {"chars": len(text)}

    def outputs(self, item):
        return [self.out / "upper" / f"{item.slide_id}.txt"]


def items(folder: Path, *names: str) -> list[Item]:
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name in names:
        (folder / f"{name}.txt").write_text(name)
        made.append(Item(name, folder / f"{name}.txt"))
    return made


def test_a_run_records_each_slide_and_a_rerun_skips_it(tmp_path):
    slides = items(tmp_path / "in", "a", "bb", "ccc")
    job = UpperJob(tmp_path / "out")
    records = run_slides(slides, job, QUIET, job.out)
    assert [(r["slide"], r["status"], r["chars"]) for r in records] == [("a", DONE, 1), ("bb", DONE, 2),
                                                                       ("ccc", DONE, 3)]
    assert (job.out / "upper" / "bb.txt").read_text() == "BB"
    saved = json.loads((job.out / "status" / "bb.json").read_text())
    assert saved["status"] == DONE and saved["version"] == 1 and saved["path"] == str(slides[1].path)
    again = run_slides(slides, job, QUIET, job.out)
    assert [r["status"] for r in again] == [SKIPPED] * 3
    assert json.loads((job.out / "status" / "bb.json").read_text())["status"] == DONE  # the file keeps "done"


def test_other_settings_a_changed_slide_or_a_lost_output_redo_the_slide(tmp_path):
    slides = items(tmp_path / "in", "a", "b", "c")
    job = UpperJob(tmp_path / "out")
    run_slides(slides, job, QUIET, job.out)
    slides[0].path.write_text("edited")
    (job.out / "upper" / "b.txt").unlink()
    assert [r["status"] for r in run_slides(slides, job, QUIET, job.out)] == [DONE, DONE, SKIPPED]
    assert (job.out / "upper" / "a.txt").read_text() == "EDITED"
    other = UpperJob(job.out, version=2)
    assert [r["status"] for r in run_slides(slides, other, QUIET, job.out)] == [DONE] * 3


def test_a_failing_slide_fails_alone_with_one_line_and_no_output(tmp_path):
    slides = items(tmp_path / "in", "a", "bad", "crash", "d")
    job = UpperJob(tmp_path / "out")
    stale = job.out / "upper" / "bad.txt"  # an earlier run's output beside the failure
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    records = {r["slide"]: r for r in run_slides(slides, job, QUIET, job.out)}
    assert [records[s]["status"] for s in ("a", "bad", "crash", "d")] == [DONE, FAILED, FAILED, DONE]
    assert records["bad"]["reason"] == f"{slides[1].path}: not a slide (second line)"
    assert records["crash"]["reason"] == f"{slides[2].path}: RuntimeError: libtiff hiccup"
    assert not stale.exists() and not (job.out / "upper" / "crash.txt").exists()
    assert counts(records.values()) == {DONE: 2, SKIPPED: 0, FAILED: 2}
    again = {r["slide"]: r["status"] for r in run_slides(slides, job, QUIET, job.out)}
    assert again == {"a": SKIPPED, "bad": FAILED, "crash": FAILED, "d": SKIPPED}  # failures are retried


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    slides = items(tmp_path / "in", "a")
    job = UpperJob(tmp_path / "out")
    run_slides(slides, job, QUIET, job.out)
    stale = [job.out / "upper" / ".a.txt.k4j2.tmp", job.out / "status" / ".a.json.zz.tmp"]
    for path in stale:
        path.write_text("half")
    assert run_one(slides[0], job, job.out)["status"] == SKIPPED
    assert not any(p.exists() for p in stale)


def test_shards_share_the_slides_round_robin_and_collect_merges_them(tmp_path):
    slides = items(tmp_path / "in", "s0", "s1", "s2", "s3", "s4")
    job = UpperJob(tmp_path / "out")
    first = run_slides(slides, job, RunSettings(shard_index=0, num_shards=2, progress=False), job.out)
    assert [r["slide"] for r in first] == ["s0", "s2", "s4"]
    merged = merge_records(slides, job, job.out)
    assert [r["status"] for r in merged] == [DONE, PENDING, DONE, PENDING, DONE]
    assert merged[1] == {"slide": "s1", "path": str(slides[1].path), "status": PENDING, "reason": "not run yet"}
    second = run_slides(slides, job, RunSettings(shard_index=1, num_shards=2, progress=False), job.out)
    assert [r["slide"] for r in second] == ["s1", "s3"]
    assert [r["status"] for r in merge_records(slides, job, job.out, second)] == [DONE] * 5


def test_workers_give_the_records_of_one_process(tmp_path):
    slides = items(tmp_path / "in", "a", "bad", "c", "d")
    one = run_slides(slides, UpperJob(tmp_path / "one"), QUIET, tmp_path / "one")
    two = run_slides(slides, UpperJob(tmp_path / "two"), RunSettings(workers=2, progress=False), tmp_path / "two")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in one]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in two] == strip


def test_two_slides_of_one_name_but_for_case_are_refused_before_any_runs(tmp_path):
    slides = [*items(tmp_path / "in", "a"), *items(tmp_path / "other", "A")]
    job = UpperJob(tmp_path / "out")
    with pytest.raises(ConfigError, match="slides 'a' and 'A' have one name"):
        run_slides(slides, job, QUIET, job.out)
    assert not job.out.exists()


@pytest.mark.parametrize(("values", "message"), [
    ({"shard_index": 2, "num_shards": 2}, r"shard_index=2 must be in \[0, num_shards=2\)"),
    ({"num_shards": 0}, r"shard_index=0 must be in \[0, num_shards=0\)"),
    ({"workers": 0}, "workers must be a whole number >= 1, got 0"),
])
def test_bad_settings_are_one_line(values, message):
    with pytest.raises(ConfigError, match=message):
        RunSettings(**values)


def test_the_stage_names_the_config_path_and_what_it_does():
    with pytest.raises(ConfigError, match="tiling.run.stage must be all, tile or merge, got 'extract'"):
        RunSettings(stage="extract").check_stage("tile", "tiling.run")
    assert RunSettings(stage="extract").check_stage("extract", "run").works
    assert RunSettings().merges and not RunSettings(num_shards=2).merges
    merge = RunSettings(stage="merge", num_shards=2)
    assert merge.merges and not merge.works


def test_counts_line():
    records = [{"status": s} for s in (DONE,) * 5 + (SKIPPED,) * 2 + (FAILED,)]
    assert counts_line(counts(records)) == "done 5, skipped 2, failed 1"
