"""Devices and precision: ``auto|cpu|gpu|mps|directml``; bf16 mixed precision on capable GPUs.

DirectML (AMD/Intel GPUs on Windows or WSL2) comes from the optional extra ``directml``
(``torch-directml`` pins its own torch, so install it in a separate environment).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator

from vistumor.errors import ConfigError


def precision(trainer_cfg: Any) -> str:
    """``trainer.precision``; ``auto`` = ``bf16-mixed`` on a bf16-capable CUDA GPU, else 32-bit."""
    value = str(trainer_cfg.get("precision") or "auto")
    if value != "auto":
        return value
    accelerator = str(trainer_cfg.get("accelerator") or "auto")
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def accelerator(name: str | None) -> str | Accelerator:
    """Lightning's accelerator names, plus ``directml``."""
    if name != "directml":
        return name or "auto"
    return DirectMLAccelerator()


class DirectMLAccelerator(Accelerator):
    """Runs on ``torch_directml.device()`` (single device; mixed precision unsupported)."""

    def __init__(self):
        super().__init__()
        _require_directml()

    def setup_device(self, device: torch.device) -> None:
        pass

    def teardown(self) -> None:
        pass

    def get_device_stats(self, device) -> dict[str, Any]:
        return {}

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        if devices in ("auto", -1, None):
            return [0]
        if isinstance(devices, int):
            return list(range(devices))
        return [int(d) for d in devices]

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        dml = _require_directml()
        return [dml.device(i) for i in DirectMLAccelerator.parse_devices(devices)]

    @staticmethod
    def auto_device_count() -> int:
        return _require_directml().device_count()

    @staticmethod
    def name() -> str:
        return "directml"

    @staticmethod
    def is_available() -> bool:
        try:
            _require_directml()
        except ConfigError:
            return False
        return True


def _require_directml():
    try:
        import torch_directml
    except ImportError as err:
        raise ConfigError(
            "trainer.accelerator=directml needs torch-directml (Windows or WSL2 only; it pins "
            "torch 2.4.1): pip install -e '.[directml]' in a separate environment"
        ) from err
    return torch_directml


def inference_device(name: str | None = "auto") -> torch.device:
    """The device to run a trained model on: ``auto`` (CUDA when available, else CPU),
    ``cpu``, ``cuda``/``gpu`` (``cuda:N`` too) or ``mps``."""
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda[:N] or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device
