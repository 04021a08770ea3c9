"""Checkpoints: the model kind recorded and read by one function, the model loaded with its
path beside it (nothing attached to it), and any unreadable file refused in one line."""

from __future__ import annotations

import random
import zipfile

import lightning as L
import pytest
import torch

from vistumor.errors import ConfigError
from vistumor.model.checkpoints import LoadedModel, load_classifier, load_model, read_checkpoint
from vistumor.model.classifier import PatchClassifier
from vistumor.model.kinds import KIND_KEY, ModelKind, model_kind
from vistumor.model.segmenter import PatchSegmenter


def save(model: L.LightningModule, path) -> dict:
    """``model`` saved as training saves it (Lightning's own checkpoint), read back raw."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    models = {ModelKind.CLASSIFIER: PatchClassifier("test_resnet", pretrained=False),
              ModelKind.SEGMENTER: PatchSegmenter("test_resnet", pretrained=False, image_size=64,
                                                  decoder_channels=(32, 16, 16, 8, 8))}
    return {kind: (folder / f"{kind.value}.ckpt", save(model, folder / f"{kind.value}.ckpt"))
            for kind, model in models.items()}


@pytest.mark.parametrize("kind", [ModelKind.CLASSIFIER, ModelKind.SEGMENTER])  # patch models; MIL: tests/test_mil.py
def test_the_kind_is_recorded_and_the_model_loads_with_its_path(saved, kind):
    path, ckpt = saved[kind]
    assert ckpt["hyper_parameters"][KIND_KEY] == kind.value
    assert model_kind(ckpt) is model_kind(ckpt["hyper_parameters"]) is kind
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel) and loaded.path == path and loaded.kind is kind
    assert type(loaded.model) is {ModelKind.CLASSIFIER: PatchClassifier, ModelKind.SEGMENTER: PatchSegmenter}[kind]
    assert model_kind(loaded.model) is kind and not loaded.model.training
    assert not hasattr(loaded.model, "checkpoint_path")  # nothing attached after loading
    assert type(load_classifier(path)) is type(loaded.model)


def test_checkpoints_without_the_kind_are_read_by_the_old_rule(saved, tmp_path):
    for kind, (_, ckpt) in saved.items():
        hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != KIND_KEY}
        assert model_kind(hparams) is kind  # decoder_channels: a U-Net
        old = tmp_path / f"old_{kind.value}.ckpt"
        torch.save({"hyper_parameters": hparams, "state_dict": ckpt["state_dict"]}, old)
        assert load_model(old).kind is kind


def test_an_unknown_kind_is_one_line_naming_the_file(saved, tmp_path):
    _, ckpt = saved[ModelKind.CLASSIFIER]
    path = tmp_path / "odd.ckpt"
    torch.save({"hyper_parameters": {**ckpt["hyper_parameters"], KIND_KEY: "banana"},
                "state_dict": ckpt["state_dict"]}, path)
    with pytest.raises(ConfigError, match=r"odd.ckpt: unknown model kind 'banana'; known: classifier, segmenter"):
        load_model(path)
    with pytest.raises(TypeError):
        model_kind(object())


def garbage_files() -> list[tuple[str, bytes]]:
    """A text file, an empty one, and 50 seeded random byte strings, some wearing the magic
    of a zip (torch's format) or a pickle so the parser gets further before it trips."""
    cases = [("text", b"epoch: 3\nval/acc: 0.97\nthis is a text file, not a checkpoint\n"), ("empty", b"")]
    rng = random.Random(16)
    for i in range(50):
        body = rng.randbytes(rng.randint(1, 700))
        prefix = (b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95")[i % 4]
        cases.append((f"random{i}", prefix + body))
    return cases


def test_any_unreadable_file_is_one_line_naming_it(tmp_path):
    escaped = []
    for name, data in garbage_files():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(data)
        for reader in (read_checkpoint, load_model):
            try:
                reader(path)
            except ConfigError as err:
                message = str(err)
                assert message.startswith(f"{path}: ") and "\n" not in message, message
            except Exception as err:  # noqa: BLE001 - what the test looks for
                escaped.append(f"{name}: {type(err).__name__}: {err}")
            else:
                escaped.append(f"{name}: loaded")
    assert not escaped, escaped


def test_a_zip_with_a_garbage_pickle_is_refused(tmp_path):
    path = tmp_path / "zip.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x01\x00\x00\x00a")
        archive.writestr("archive/version", "3\n")
    with pytest.raises(ConfigError, match="zip.ckpt: not a loadable VisTumor checkpoint"):
        read_checkpoint(path)
