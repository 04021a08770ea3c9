"""Whole-slide inference: heatmaps, Grad-CAM++, lesions and scores per slide (Hydra entry point)."""

import hydra
from omegaconf import DictConfig

from vistumor.cli import check_overrides, run_task
from vistumor.tasks import infer


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> dict:
    return run_task(infer, cfg)


if __name__ == "__main__":
    check_overrides()
    main()
