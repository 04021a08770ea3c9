"""DDP with 2 CPU processes (gloo) through the CLI: fit, test, and the same test metrics as one process.

Lightning's DDP launcher re-runs ``train.py`` for rank 1, so this goes through a subprocess.
The tiny manifest has 10 patches per split: a DistributedSampler gives each rank 5, with
no padding duplicate, so the DDP metrics over the gathered predictions must equal those of a
single process testing the same checkpoint (up to float summation order of the loss).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import PROJECT, compose_train, train_overrides

from vistumor.tasks import train


def test_ddp_fit_and_test_match_a_single_process(tiled, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "train.py", *train_overrides(tmp_path, tiled.data.root, tiled.tiles_dir),
        "trainer=ddp_cpu", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((run_dir / "metrics.json").read_text())

    # the fit was distributed: each rank saw 5 of the 10 training patches, one batch each
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 1 and last["epoch"] == 0
    assert ddp["best_ckpt"] == str(run_dir / "checkpoints" / "epoch00.ckpt")

    single = train(compose_train(tmp_path / "single", tiled.data.root, "train=false",
                                 f"ckpt_path={ddp['best_ckpt']}", tiles_dir=tiled.tiles_dir))
    names = sorted(k for k in single if k.startswith("test/") and not k.endswith("_op"))  # (no op. under DDP)
    assert len(names) == 9 and names == sorted(k for k in ddp if k.startswith("test/"))
    assert {k: ddp[k] for k in names} == pytest.approx({k: single[k] for k in names}, abs=1e-6)
    assert [ddp[f"test_{k}"] for k in ("tp", "fp", "tn", "fn")] == [
        single[f"test_{k}"] for k in ("tp", "fp", "tn", "fn")]

    # rank 0 wrote every rank's predictions, each patch once
    keys = ["slide_id", "x0", "y0"]
    both = pd.read_csv(run_dir / "predictions.csv").merge(
        pd.read_csv(tmp_path / "single" / "run" / "predictions.csv"), on=keys, suffixes=("_ddp", ""),
        validate="one_to_one",
    )
    assert len(both) == 10 and (both["label_ddp"] == both["label"]).all()
    assert both["prob_ddp"].to_numpy() == pytest.approx(both["prob"].to_numpy(), abs=1e-6)
