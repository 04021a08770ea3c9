"""Trained classifiers from Lightning checkpoints, checked before anything else happens.

Checkpoints load with ``torch.load(weights_only=True)``: no code from the file runs, so a
pickle payload is refused. Every problem (missing, truncated, not ours, another backbone)
is one :class:`~vistumor.errors.ConfigError` line naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vistumor.errors import ConfigError
from vistumor.model.classifier import PatchClassifier
from vistumor.model.segmenter import PatchSegmenter


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents (``hyper_parameters``, ``state_dict``, ...), safely loaded."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(f"not a loadable VisTumor checkpoint ({first})", path) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "backbone" not in hparams or "state_dict" not in ckpt:
        raise ConfigError("not a VisTumor checkpoint (no backbone hyper-parameters / state_dict)", path)
    return ckpt


#: what Lightning needs to resume a run (a weights-only save lacks the last two)
RESUME_KEYS = ("pytorch-lightning_version", "optimizer_states", "loops")


def check_compatible(path: str | Path, backbone: str, resume: bool = True) -> dict[str, Any]:
    """Read a checkpoint to resume (or test) and refuse one of another backbone, naming both."""
    ckpt = read_checkpoint(path)
    missing = [k for k in (RESUME_KEYS if resume else RESUME_KEYS[:1]) if k not in ckpt]
    if missing:
        raise ConfigError(f"not a Lightning checkpoint to {'resume' if resume else 'test'} "
                          f"(no {', '.join(missing)}; saved with weights only?)", path)
    trained = ckpt["hyper_parameters"]["backbone"]
    if trained != backbone:
        raise ConfigError(
            f"checkpoint of backbone '{trained}' cannot resume model '{backbone}' "
            f"(set model={trained}'s config, or start without ckpt_path)", path
        )
    return ckpt


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> PatchClassifier:
    """A trained :class:`PatchClassifier` in eval mode, its weights from the checkpoint."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    kwargs = {k: v for k, v in hparams.items() if k not in ("pretrained", "weights_path")}
    try:
        model_class = PatchSegmenter if "decoder_channels" in hparams else PatchClassifier
        model = model_class(**kwargs, pretrained=False, weights_path=None)
    except TypeError as err:  # another module's hyper-parameters
        raise ConfigError(f"not a VisTumor checkpoint ({err})", path) from err
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"checkpoint weights do not fit {hparams['backbone']} ({first})", path) from err
    model.checkpoint_path = str(path)
    return model.to(device).eval()
