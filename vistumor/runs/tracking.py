"""Experiment tracking: a CSV log always, Weights & Biases when configured.

W&B runs online with an API key, offline without one (``wandb sync`` uploads later) and
``disabled`` when ``WANDB_MODE=disabled`` (the tests). Asking for ``online`` without a key
is a configuration error, not a hang or a prompt. Offline opens no outside connection
(:func:`quiet_offline`).
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from vistumor.errors import ConfigError

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled", "auto")


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str | None) -> str:
    """The mode W&B will run in: ``WANDB_MODE`` wins, then the config, then the key decides."""
    mode = os.environ.get("WANDB_MODE") or requested or "auto"
    if mode == "dryrun":
        mode = "offline"
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
    if mode == "auto":
        mode = "online" if has_wandb_key() else "offline"
    if mode == "online" and not has_wandb_key():
        raise ConfigError(
            "W&B is asked to run online but there is no API key: `wandb login`, set "
            "WANDB_API_KEY, or use logger.wandb.mode=offline"
        )
    return mode


def quiet_offline(mode: str) -> None:
    """Keep an offline W&B run off the network.

    Offline, wandb's Python side only talks to its local service process (``wandb-core``, over
    a Unix or localhost socket), but that process still reports errors and telemetry: one DNS
    look-up of ``api.forge.coreweave.com`` per run (wandb 0.31, seen with ``strace -f``).
    ``WANDB_ERROR_REPORTING=false`` starts it with ``--no-observability`` and switches the
    Python-side telemetry off too. Set before the service starts (the first run of the
    process); a user's own setting wins.
    """
    if mode == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def build_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Loggers from ``cfg.logger`` (name -> ``_target_`` node); W&B gets its resolved mode."""
    loggers = []
    for name, node in (cfg or {}).items():
        if node is None or "_target_" not in node:
            continue
        if "Wandb" in str(node["_target_"]):
            mode = wandb_mode(node.get("mode"))
            if mode == "disabled":
                log.info("W&B disabled")
                continue
            quiet_offline(mode)
            node = OmegaConf.merge(node, {"mode": mode})
        log.info("logger %s: %s", name, node["_target_"])
        loggers.append(instantiate(node))
    return loggers


def finish(loggers: list[Logger]) -> None:
    """Close W&B runs, so each job of a multirun is its own run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            wandb.finish()


def log_table(project: str, group: str | None, name: str, columns: list[str],
              rows: list[list[Any]], mode: str | None = None, config: Mapping | None = None,
              folder: str | None = None) -> None:
    """Log one table as its own W&B run (the sweep's comparison table), files under ``folder``."""
    mode = wandb_mode(mode)
    if mode == "disabled":
        return
    quiet_offline(mode)
    import wandb

    run = wandb.init(project=project, group=group, name=name, job_type="comparison",
                     mode=mode, config=dict(config or {}), reinit="finish_previous", dir=folder)
    run.log({name: wandb.Table(columns=columns, data=rows)})
    run.finish()
