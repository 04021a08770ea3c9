"""Tile whole-slide images into a labelled, balanced, split patch manifest (Hydra entry point)."""

import hydra
from omegaconf import DictConfig

from vistumor.cli import check_overrides, run_task
from vistumor.tasks import tile


@hydra.main(version_base="1.3", config_path="conf", config_name="tiling")
def main(cfg: DictConfig) -> dict:
    return run_task(tile, cfg)


if __name__ == "__main__":
    check_overrides()
    main()
