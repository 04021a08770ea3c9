"""What a trained model is, in one place: the kind each LightningModule declares, records in
its checkpoints (``hyper_parameters["model_kind"]``) and :func:`model_kind` reads back.

A new kind of model (a MIL aggregator, say) adds its member to :class:`ModelKind`, declares
it as its class's ``kind`` and registers its class with the checkpoint loader
(:data:`vistumor.model.checkpoints.MODEL_CLASSES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from vistumor.errors import ConfigError

#: the hyper-parameter a checkpoint records its model kind under
KIND_KEY = "model_kind"


class ModelKind(StrEnum):
    """The kinds of trained model, by what they turn a patch into."""

    #: a patch classifier, localised by CAMs
    CLASSIFIER = "classifier"
    #: a U-Net whose own predicted mask is its map
    SEGMENTER = "segmenter"
    #: attention MIL on bags of trunk features, trained on slide labels (vistumor.model.mil)
    MIL = "mil"


def model_kind(source: Any) -> ModelKind:
    """The kind of a model, of a checkpoint (``torch.load``'s dict) or of its hyper-parameters.

    Checkpoints written before the kind was recorded are told apart the old way, here only:
    a U-Net's hyper-parameters hold its ``decoder_channels``.

    Raises:
        ConfigError: a recorded kind this version does not know.
        TypeError: ``source`` is none of the three.
    """
    if isinstance(source, Mapping):
        hparams = source.get("hyper_parameters", source)
        recorded = hparams.get(KIND_KEY) if isinstance(hparams, Mapping) else None
        if recorded is None:
            legacy = isinstance(hparams, Mapping) and "decoder_channels" in hparams
            return ModelKind.SEGMENTER if legacy else ModelKind.CLASSIFIER
        try:
            return ModelKind(recorded)
        except ValueError:
            raise ConfigError(f"unknown model kind '{recorded}'; known: "
                              f"{', '.join(k.value for k in ModelKind)}") from None
    kind = getattr(type(source), "kind", None)
    if isinstance(kind, ModelKind):
        return kind
    raise TypeError(f"no model kind in a {type(source).__name__}")
