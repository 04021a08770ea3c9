"""Explain trained checkpoints: Grad-CAM++ / saliency figures and localization scores (Hydra entry point)."""

import hydra
from omegaconf import DictConfig

from vistumor.cli import check_overrides, run_task
from vistumor.tasks import explain


@hydra.main(version_base="1.3", config_path="conf", config_name="explain")
def main(cfg: DictConfig) -> dict:
    return run_task(explain, cfg)


if __name__ == "__main__":
    check_overrides()
    main()
