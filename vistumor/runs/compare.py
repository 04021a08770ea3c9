"""The comparison table of a sweep: one row per finished run, from its ``metrics.json``.

Written as ``comparison.csv`` and ``comparison.md`` into the sweep folder when a Hydra
multirun ends (:class:`CompareCallback`), and rebuilt from any folder of finished runs with
``python -m vistumor.runs.compare <folder>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vistumor.explain import localization
from vistumor.files import write_text
from vistumor.model import metrics

log = logging.getLogger(__name__)

_TEST_TITLES = {"acc": "accuracy", "fpr": "FPR", "fnr": "FNR", "recall": "recall", "auroc": "AUROC"}
_CAM_TITLES = {"pointing": "CAM pointing", "energy": "CAM energy", "iou": "CAM IoU",
               "dice": "CAM Dice", "auroc": "CAM pixel AUROC"}
assert set(_TEST_TITLES) <= set(metrics.NAMES) and set(_CAM_TITLES) <= set(localization.NAMES)

#: metrics.json key -> column, in table order (keys spelled by ``metrics.key``, as logged).
#: Localization columns appear when the run logged them.
COLUMNS = {
    "model": "model",
    "weights": "weights",
    **{metrics.key("test", name): title for name, title in _TEST_TITLES.items()},
    **{metrics.key("test", f"cam_{name}"): title for name, title in _CAM_TITLES.items()},
    "params_trainable": "trainable params",
    "params_total": "total params",
    "images_per_s": "images/s",
    "wall_time_s": "wall time (s)",
    "run_dir": "run",
}

def collect(folder: str | Path) -> pd.DataFrame:
    """One row per ``metrics.json`` below ``folder``, ordered by run folder."""
    rows = []
    for path in sorted(Path(folder).rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("skipping unreadable %s", path)
            continue
        metrics.setdefault("run_dir", str(path.parent))
        rows.append(metrics)
    if not rows:
        return pd.DataFrame(columns=list(COLUMNS.values()))
    table = pd.DataFrame(rows)
    present = [k for k in COLUMNS if k in table.columns]
    return table[present].rename(columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no optional dependencies)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


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
        print(f"error: {args.folder}: not a folder", file=sys.stderr)
        return 2
    table = write_comparison(args.folder)
    if table.empty:
        print(f"error: {args.folder}: no finished runs (no metrics.json)", file=sys.stderr)
        return 1
    print(to_markdown(table))
    print(f"written: {Path(args.folder) / 'comparison.md'} and comparison.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
