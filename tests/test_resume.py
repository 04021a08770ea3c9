"""A resumed run equals an uninterrupted one: same seed, killed after epoch 1, resumed from
``last.ckpt``, every final metric within 1e-6 (sampler, augmentation and best-checkpoint
ranking restored or made independent of what was lost)."""

from __future__ import annotations

import pytest

from vistumor.tasks.training import train

#: what differs by nature between two runs (time, folders), not by what they computed
VOLATILE = ("wall_time_s", "images_per_s", "run_dir", "best_ckpt", "predictions", "confusion_matrix", "roc",
            "train/images_per_s")


def comparable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


@pytest.mark.parametrize("extra", [(), ("callbacks=feature_cache", "callbacks.feature_cache.variants=2")],
                         ids=["images", "feature-cache"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(train_cfg, tmp_path, extra):
    common = ("trainer.max_epochs=3", *extra)
    whole = train(train_cfg(*common, root_dir=tmp_path / "whole"))
    with pytest.raises(SystemExit, match="killed in epoch 2"):
        train(train_cfg(*common, "+callbacks.crash._target_=conftest.CrashAt", "+callbacks.crash.epoch=2",
                        root_dir=tmp_path / "killed"))
    last = tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt"
    resumed = train(train_cfg(*common, f"ckpt_path={last}", root_dir=tmp_path / "resumed"))
    assert comparable(resumed) == pytest.approx(comparable(whole), abs=1e-6)
    assert {k for k in whole if k.startswith("val/")} and {k for k in whole if k.startswith("test/")}
