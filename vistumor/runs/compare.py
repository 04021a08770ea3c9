"""The comparison table of a sweep: one row per finished run, from its ``metrics.json``.

Localization columns: ``test/cam_*`` (the model's map: Grad-CAM++, or a segmenter's mask) and,
for every other explanation method a run scored, ``test/<method>_*`` (``attention pointing``,
``rollout IoU``...): whatever a run logged, and what ``explain.py`` runs of its checkpoints on
the test split scored (their ``summary.json`` below the sweep or run folder).

Written as ``comparison.csv`` and ``comparison.md`` into the sweep folder when a Hydra
multirun ends (:class:`CompareCallback`), and rebuilt from any folder of finished runs with
``python -m vistumor.runs.compare <folder>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vistumor.errors import VisTumorError, user_error
from vistumor.evaluate.camelyon16 import report
from vistumor.explain import localization, methods
from vistumor.files import write_text
from vistumor.infer import cell_scores
from vistumor.labels import CLASSES
from vistumor.model import metrics
from vistumor.runner import DONE
from vistumor.runs import intervals

log = logging.getLogger(__name__)

_TEST_TITLES = {"acc": "accuracy", "fpr": "FPR", "fnr": "FNR", "recall": "recall", "auroc": "AUROC"}
#: localization of the model's map: Grad-CAM++ for a classifier, the predicted mask for a segmenter
_CAM_TITLES = {"pointing": "map pointing", "energy": "map energy", "iou": "map IoU",
               "dice": "map Dice", "auroc": "map pixel AUROC"}
_SLIDE_TITLES = {"slide_auc": "slide AUC", "froc": "FROC"}
assert set(_TEST_TITLES) <= set(metrics.METRIC_NAMES) and set(_CAM_TITLES) <= set(localization.SCORE_NAMES)

#: metrics.json key -> column, in table order (keys spelled by ``metrics.key``, as logged); a
#: ``<key>_ci95`` beside a key is its 95 % interval over slides. Columns appear when present.
TABLE_COLUMNS = {
    "model": "model",
    "kind": "kind",
    "weights": "weights",
    **{metrics.key("test", name): title for name, title in _TEST_TITLES.items()},
    metrics.key("test", "fpr_op"): "FPR at val op.",
    metrics.key("test", "fnr_op"): "FNR at val op.",
    **{metrics.key("test", name): title for name, title in _SLIDE_TITLES.items()},
    "vs_best": "vs best (paired, slides)",
    **{metrics.key("test", f"cam_{name}"): title for name, title in _CAM_TITLES.items()},
    **cell_scores.CELL_COLUMNS,  # whole-slide maps vs annotations, per cell (MIL: the attention heatmap)
    "params_trainable": "trainable params",
    "params_total": "total params",
    "images_per_s": "images/s",
    "wall_time_s": "wall time (s)",
    "run_dir": "run",
}
CI = "_ci95"


#: where per-method localization columns go: after the model's own map (``test/cam_*``)
_METHOD_COLUMNS_BEFORE = "params_trainable"
_LOCALIZATION_KEY = re.compile(rf"^test/(?P<method>.+)_(?P<score>{'|'.join(_CAM_TITLES)})$")


def method_columns(keys) -> dict[str, str]:
    """Localization a run logged per explanation method, ``test/<method>_<score>`` (e.g.
    ``test/attention_pointing``, ``test/rollout_iou``): key -> column ``<method> <score>``, by
    method then score. ``test/cam_*`` (the CAM monitor's map) has its own columns."""
    found = {}
    for key in keys:
        match = _LOCALIZATION_KEY.match(str(key))
        if match and match["method"] in methods.METHODS:
            found[key] = (match["method"], list(_CAM_TITLES).index(match["score"]))
    return {k: f"{method} {_CAM_TITLES[list(_CAM_TITLES)[i]].removeprefix('map ')}"
            for k, (method, i) in sorted(found.items(), key=lambda item: item[1])}


def _columns(keys) -> dict[str, str]:
    """:data:`TABLE_COLUMNS` with the per-method localization columns of ``keys`` in place."""
    extra = method_columns(keys)
    columns = {}
    for key, title in TABLE_COLUMNS.items():
        if key == _METHOD_COLUMNS_BEFORE:
            columns.update(extra)
        columns[key] = title
    return columns


def collect(folder: str | Path) -> pd.DataFrame:
    """One row per ``metrics.json`` below ``folder``, ordered by run folder, with intervals
    over slides, slide-level results of whole-slide runs of its checkpoints, and the paired
    comparison with the best run."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob("metrics.json")):
        try:
            row = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("skipping unreadable %s", path)
            continue
        row.setdefault("run_dir", str(path.parent))
        rows.append(enrich(row, folder))
    if not rows:
        return pd.DataFrame(columns=list(TABLE_COLUMNS.values()))
    compare_with_best(rows)
    table = pd.DataFrame(rows)
    columns = _columns(table.columns)
    present = [k for k in columns if k in table.columns]
    cis = {f"{k}{CI}": f"{columns[k]} 95% CI" for k in present if f"{k}{CI}" in table.columns}
    ordered = [c for k in present for c in (k, f"{k}{CI}") if c in table.columns]
    return table[ordered].rename(columns={**columns, **cis})


def enrich(row: dict, folder: Path) -> dict:
    """Add slide-bootstrap intervals of the patch metrics and the whole-slide evaluation."""
    run = Path(row["run_dir"])
    predictions = run / "predictions.csv"
    if predictions.is_file():
        row["_slides"] = intervals.read_slides(predictions)
        row.update({k: v for k, v in intervals.patch_intervals(row["_slides"]).items() if k not in row})
    for evaluation in slide_evaluations(folder, run):
        row.update(evaluation)
    for key, value in explanation_scores(folder, run).items():
        row.setdefault(key, value)  # what the run logged itself comes first
    return row


def explanation_scores(folder: Path, run: Path) -> dict[str, float]:
    """Localization scores of ``explain.py`` runs below ``folder`` (or in ``run``) of this run's
    checkpoints on the test split: ``test/<method>_<score>`` for the method each scored
    (``python explain.py 'ckpt_path=[...]' methods=[attention]`` gives the attention columns)."""
    found: dict[str, float] = {}
    for path in sorted({*folder.rglob("summary.json"), *run.rglob("summary.json")}):
        try:
            summary = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if not isinstance(summary, dict) or summary.get("split") != "test":
            continue
        for model in (summary.get("models") or {}).values():
            method = model.get("score_method")
            if method and of_run(model.get("checkpoint"), run):
                found.update({f"test/{method}_{score}": model[f"cam_{score}"] for score in _CAM_TITLES
                              if model.get(f"cam_{score}") is not None})
    return found


def slide_evaluations(folder: Path, run: Path) -> list[dict]:
    """Evaluations of whole-slide runs below ``folder`` (or in ``run``) of this run's checkpoints."""
    found = []
    pattern = f"{report.FOLDER}/{report.FILES['json']}"
    for path in sorted({*folder.rglob(pattern), *run.rglob(pattern)}):
        model_dir, infer_run = path.parent.parent, path.parent.parent.parent.parent
        description = infer_run / "run.json"
        if not description.is_file():
            continue
        models = {m["name"]: m for m in json.loads(description.read_text()).get("models", [])}
        if not of_run(models.get(model_dir.name, {}).get("checkpoint"), run):
            continue
        data = json.loads(path.read_text())
        scores = pd.read_csv(model_dir / "slides.csv", dtype={"slide": str})
        scores = scores[scores["status"] == DONE].dropna(subset=["label"])
        found.append({"test/slide_auc": data["auc"], f"test/slide_auc{CI}": data["auc_ci95"],
                      "test/froc": data["froc"], f"test/froc{CI}": data.get("froc_ci95"),
                      "_slide_scores": {s: (CLASSES[lab], float(v)) for s, lab, v in
                                        zip(scores["slide"], scores["label"], scores["score"], strict=True)},
                      **cell_scores.scores_of_run(model_dir, description)})
    return found


def of_run(checkpoint: str | None, run: Path) -> bool:
    """Whether ``checkpoint`` is one of training run ``run``'s (``<run>/checkpoints/*.ckpt``)."""
    path = Path(str(checkpoint or ""))
    return path.parent.name == "checkpoints" and path.parent.parent.resolve() == run.resolve()


def compare_with_best(rows: list[dict]) -> None:
    """``vs_best`` of each run: the paired difference to the best run (by slide AUC when every
    run has one, else by test AUROC) on the slides both were tested on."""
    by_slide = all("_slide_scores" in r for r in rows)
    key, data, statistic, what = (("test/slide_auc", "_slide_scores", intervals.slide_auc_statistic, "slide AUC")
                                  if by_slide else ("test/auroc", "_slides", intervals.patch_metric("auroc"),
                                                    "AUROC"))
    candidates = [r for r in rows if r.get(key) is not None and data in r]
    if len(candidates) < 2:
        for r in rows:
            r.pop("_slides", None), r.pop("_slide_scores", None)
        return
    best = max(candidates, key=lambda r: r[key])
    for r in candidates:
        if r is best:
            r["vs_best"] = f"best {what}"
            continue
        diff = intervals.paired_difference(r[data], best[data], statistic)
        if diff:
            r["vs_best"] = (f"{what} {diff['difference']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}], "
                            f"p={diff['p']:.2g}")
    for r in rows:
        r.pop("_slides", None), r.pop("_slide_scores", None)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no optional dependencies)."""
    def cell(v: Any) -> str:
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return f"[{cell(v[0])}, {cell(v[1])}]"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    table = _with_intervals(table)
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """Each value followed by its interval in one cell: ``0.936 [0.902, 0.961]``."""
    table = table.copy()
    for column in [c for c in table.columns if c.endswith(" 95% CI")]:
        base = column[: -len(" 95% CI")]
        if base in table.columns:
            table[base] = [_value_with_interval(v, ci) for v, ci in zip(table[base], table[column], strict=True)]
            table = table.drop(columns=column)
    return table


def _value_with_interval(value: Any, interval: Any) -> Any:
    if not isinstance(value, float) or not isinstance(interval, (list, tuple)) or len(interval) != 2:
        return value
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def write_comparison(folder: str | Path) -> pd.DataFrame:
    """Write ``comparison.csv`` and ``comparison.md`` into ``folder``; return the table."""
    folder = Path(folder)
    table = collect(folder)
    write_text(folder / "comparison.csv", table.to_csv(index=False))
    write_text(folder / "comparison.md", to_markdown(table))
    log.info("comparison of %d run(s): %s", len(table), folder / "comparison.md")
    return table


class CompareCallback(Callback):
    """Hydra callback: write the comparison table when a multirun ends (and log it to W&B)."""

    def __init__(self, wandb_project: str | None = None, wandb_group: str | None = None,
                 wandb_mode: str | None = None):
        self.wandb = (wandb_project, wandb_group, wandb_mode)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        table = write_comparison(config.hydra.sweep.dir)
        project, group, mode = self.wandb
        if project and len(table):
            from vistumor.runs.tracking import log_table

            rows = table.astype(object).where(table.notna(), None).values.tolist()
            log_table(project, group, "comparison", list(table.columns), rows, mode,
                      folder=str(config.hydra.sweep.dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the comparison table of finished runs.")
    parser.add_argument("folder", help="a multirun folder (or any folder of runs with metrics.json)")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        return user_error(VisTumorError("not a folder", args.folder))
    table = write_comparison(args.folder)
    if table.empty:
        print(f"error: {args.folder}: no finished runs (no metrics.json)", file=sys.stderr)
        return 1
    print(to_markdown(table))
    print(f"written: {Path(args.folder) / 'comparison.md'} and comparison.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
