"""Train and test a patch classifier (or, with model=abmil|clam_sb, attention MIL on slide
labels); a multirun sweeps backbones (Hydra entry point)."""

import hydra
from omegaconf import DictConfig

from vistumor.cli import check_overrides, run_task
from vistumor.tasks import train
from vistumor.tasks.mil import is_mil_config, train_mil


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train_mil if is_mil_config(cfg) else train, cfg)  # model=abmil|clam_sb: slide labels
    return metrics.get("test/auroc") if isinstance(metrics, dict) else None


if __name__ == "__main__":
    check_overrides()
    main()
