"""Configuration helpers shared by every stage: typed parameters from config nodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vistumor.errors import ConfigError


def build(cls, values: Mapping[str, Any], where: str):
    """``cls(**values)`` for a dataclass, naming the config path of any unknown key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(names)}")
    return cls(**values)


def build_parts(values: Mapping[str, Any], where: str, *classes) -> tuple:
    """One dataclass instance per class from the keys of one config group that they share out
    (``tiling.run``: the runner's settings and tiling's own checks), naming any unknown key."""
    names = [{f.name for f in dataclasses.fields(cls)} for cls in classes]
    unknown = sorted(set(values) - set().union(*names))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(set().union(*names))}")
    return tuple(cls(**{k: v for k, v in values.items() if k in own}) for cls, own in zip(classes, names, strict=True))


def plain(node) -> Any:
    """Plain Python values (dicts, lists, scalars) of a config node, resolved."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def checkpoint_paths(cfg: DictConfig) -> list[str]:
    """The checkpoints of ``ckpt_path`` (one, or a list to compare models)."""
    given = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    paths = [str(given)] if isinstance(given, str) else [str(p) for p in (given or [])]
    if not paths:
        raise ConfigError("give ckpt_path=<checkpoint> (or a list of checkpoints to compare models)")
    return paths
