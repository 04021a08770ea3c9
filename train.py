"""Train and test a patch classifier; a multirun sweeps backbones (Hydra entry point)."""

import hydra
from omegaconf import DictConfig

from vistumor.cli import check_overrides, run_task
from vistumor.tasks import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    return metrics.get("test/auroc") if isinstance(metrics, dict) else None


if __name__ == "__main__":
    check_overrides()
    main()
