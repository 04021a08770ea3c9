"""Trained models from Lightning checkpoints, checked before anything else happens.

Checkpoints load with ``torch.load(weights_only=True)``: no code from the file runs, so a
pickle payload is refused. Every problem (missing, truncated, garbage, not ours, another
backbone) is one :class:`~vistumor.errors.ConfigError` line naming the file. What kind of
model a checkpoint holds is read by :func:`vistumor.model.kinds.model_kind`; the class it
is rebuilt as comes from :data:`MODEL_CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vistumor.errors import ConfigError
from vistumor.model.classifier import PatchClassifier
from vistumor.model.kinds import KIND_KEY, ModelKind, model_kind
from vistumor.model.segmenter import PatchSegmenter

#: model kind -> the LightningModule its checkpoints are rebuilt as (a new kind registers here)
MODEL_CLASSES: dict[ModelKind, type[PatchClassifier]] = {
    ModelKind.CLASSIFIER: PatchClassifier,
    ModelKind.SEGMENTER: PatchSegmenter,
}
#: hyper-parameters that are not constructor arguments, or that loading sets itself
_NOT_ARGUMENTS = ("pretrained", "weights_path", KIND_KEY)


@dataclass(frozen=True)
class LoadedModel:
    """A trained model in eval mode with the checkpoint it came from and its kind."""

    model: PatchClassifier
    path: Path
    kind: ModelKind


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents (``hyper_parameters``, ``state_dict``, ...), safely loaded."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a garbage file fails anywhere in the unpickler
        raise ConfigError(f"not a loadable VisTumor checkpoint ({_first_line(err)})", path) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if (not isinstance(hparams, dict) or not isinstance(hparams.get("backbone"), str)
            or not isinstance(ckpt.get("state_dict"), dict)):
        raise ConfigError("not a VisTumor checkpoint (no backbone hyper-parameters / state_dict)", path)
    return ckpt


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The trained model of a checkpoint in eval mode on ``device``, with its path and kind."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    try:
        kind = model_kind(hparams)
    except ConfigError as err:
        raise ConfigError(str(err), path) from err
    if kind not in MODEL_CLASSES:
        raise ConfigError(f"a {kind.value} checkpoint: patch models only here "
                          f"({', '.join(k.value for k in MODEL_CLASSES)})", path)
    kwargs = {k: v for k, v in hparams.items() if k not in _NOT_ARGUMENTS}
    try:
        model = MODEL_CLASSES[kind](**kwargs, pretrained=False, weights_path=None)
    except ConfigError as err:
        raise ConfigError(f"its hyper-parameters do not build a model ({err})", path) from err
    except (TypeError, ValueError, RuntimeError, KeyError) as err:  # another module's, or an unknown backbone
        raise ConfigError(f"not a VisTumor checkpoint ({_first_line(err)})", path) from err
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint weights do not fit {hparams['backbone']} ({first})", path) from err
    return LoadedModel(model.to(device).eval(), path, kind)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> PatchClassifier:
    """The trained patch model of a checkpoint (a :class:`PatchClassifier`, or a subclass by
    its kind) in eval mode; :func:`load_model` gives its path and kind beside it."""
    return load_model(path, device).model
