"""Pathology foundation models: the cards' architectures (built on the meta device), their
statistics and embedding rules, hub access, local weights; fp16 feature cache; the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import httpx2
import pandas as pd
import pytest
import timm
import torch
from conftest import CONF, PROJECT, train_overrides
from huggingface_hub.errors import GatedRepoError
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from vistumor.data.features import FeatureCache, FeatureDataset, extract
from vistumor.errors import ConfigError
from vistumor.explain.methods import explainer
from vistumor.model import foundation
from vistumor.model.backbones import create_backbone
from vistumor.model.checkpoints import load_classifier
from vistumor.model.classifier import PatchClassifier
from vistumor.model.foundation import ClassMeanPool, Trunk
from vistumor.runs.compare import collect

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
H_OPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
#: config -> (trunk parameters in M to 0.1 M, head input width, card statistics, hub repo)
PUBLISHED = {
    "uni": (303.4, 1024, IMAGENET, "MahmoodLab/UNI"),
    "uni2_h": (681.4, 1536, IMAGENET, "MahmoodLab/UNI2-h"),
    "virchow2": (631.2, 2560, IMAGENET, "paige-ai/Virchow2"),
    "h_optimus_0": (1134.8, 1536, H_OPTIMUS, "bioptimus/H-optimus-0"),
    "h_optimus_1": (1134.8, 1536, H_OPTIMUS, "bioptimus/H-optimus-1"),
    # the hub's config.json builds a 16 px patch embedding (the weights are 1536x3x16x16):
    # 1,134.95 M, not the 1,134.8 M of a 14 px ViT-g (see conf/model/gigapath.yaml)
    "gigapath": (1135.0, 1536, IMAGENET, "prov-gigapath/prov-gigapath"),
}


def model_cfg(name: str, *overrides: str) -> dict:
    """``conf/model/<name>.yaml`` as the training task instantiates it, minus the optimiser."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", *overrides])
    node = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("_target_", "optimizer", "scheduler"):
        node.pop(key)
    return node


def trunk_parameters(model: PatchClassifier) -> int:
    head = {id(p) for p in model.net.get_classifier().parameters()}
    return sum(p.numel() for p in model.net.parameters() if id(p) not in head)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_foundation_architectures_match_their_cards(name):
    millions, width, (mean, std), repo = PUBLISHED[name]
    cfg = model_cfg(name, "model.pretrained=false")
    assert cfg["backbone"] == name and foundation.repo_of(cfg["trunk"]["hub"]) == repo
    with torch.device("meta"):  # 0.3-1.1 B parameters: shapes only, no memory
        model = PatchClassifier(**cfg)
        features = model.features(torch.zeros(2, 3, 224, 224, dtype=torch.uint8))
    assert round(trunk_parameters(model) / 1e6, 1) == millions
    assert model.net.get_classifier().in_features == width == features.shape[1]
    assert model.data_config["mean"] == pytest.approx(mean) and model.data_config["std"] == pytest.approx(std)
    assert model.input_size == 224 and model.weights_source == "random"
    assert model.head_only  # frozen trunk, linear head


def test_register_tokens_and_mlp_of_the_cards():
    """The details the counts rest on: register tokens, packed SwiGLU, position embeddings."""
    expected = {"uni2_h": (9, 256), "virchow2": (5, 261), "h_optimus_0": (5, 256), "gigapath": (1, 197)}
    for name, (prefix, positions) in expected.items():
        with torch.device("meta"):
            net = PatchClassifier(**model_cfg(name, "model.pretrained=false")).net
        assert net.num_prefix_tokens == prefix and net.pos_embed.shape[1] == positions, name
        assert type(net.blocks[0].mlp).__name__ == "GluMlp" and isinstance(net.blocks[0].mlp.act, torch.nn.SiLU)


def test_cls_mean_is_class_token_and_mean_of_patch_tokens():
    tokens = torch.tensor([[[1.0, 2.0], [9.0, 9.0], [9.0, 9.0], [2.0, 4.0], [4.0, 8.0]]])  # cls, 2 reg, 2 patches
    assert ClassMeanPool(num_prefix_tokens=3)(tokens).tolist() == [[1.0, 2.0, 3.0, 6.0]]


@pytest.fixture(scope="module")
def tiny_trunk() -> dict:
    """A tiny ViT with 2 register tokens, a SwiGLU MLP and its own statistics."""
    return {"architecture": "test_vit", "hub": "hf-hub:someone/tiny-pathology-vit",
            "kwargs": {"img_size": 32, "patch_size": 8, "reg_tokens": 2, "mlp_layer": "SwiGLUPacked",
                       "act_layer": "silu"},
            "mean": [0.7, 0.6, 0.7], "std": [0.2, 0.25, 0.15]}


def tiny(trunk: dict, **kwargs) -> PatchClassifier:
    return PatchClassifier("tiny_fm", pretrained=False, trunk=trunk, **kwargs)


def test_cls_mean_reads_the_embedding_and_lets_gradients_reach_the_patches(tiny_trunk):
    model = tiny(tiny_trunk, pooling="cls_mean")
    net = model.net
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    tokens = net.forward_features(model.normalize(images))  # (3, 1 + 2 + 16, 64)
    assert tokens.shape[1] == 3 + 16 and net.num_prefix_tokens == 3
    expected = torch.cat([tokens[:, 0], tokens[:, 3:].mean(dim=1)], dim=1)
    assert torch.allclose(model.features(images), expected, atol=1e-6)
    assert net.get_classifier().in_features == 2 * net.embed_dim == expected.shape[1]
    assert torch.allclose(model(images), net.get_classifier()(expected), atol=1e-6)
    tokens = tokens.detach().requires_grad_(True)
    net.forward_head(tokens)[:, 1].sum().backward()
    assert tokens.grad[:, 3:].abs().sum(dim=-1).gt(0).all()  # every patch token
    assert tokens.grad[:, 1:3].abs().sum() == 0  # registers are not part of the embedding


def test_card_statistics_normalise_the_input(tiny_trunk):
    model = tiny(tiny_trunk)
    x = model.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    for c, (mean, std) in enumerate(zip(tiny_trunk["mean"], tiny_trunk["std"], strict=True)):
        assert x[0, c, 0, 0].item() == pytest.approx((1 - mean) / std, rel=1e-6)


def test_checkpoint_rebuilds_the_card_offline(tiny_trunk, tmp_path):
    model = tiny(tiny_trunk, pooling="cls_mean")
    path = tmp_path / "fm.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    loaded = load_classifier(path)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(loaded(images), model.eval()(images))
    assert loaded.data_config["mean"] == pytest.approx(tiny_trunk["mean"])


def gated(*args, **kwargs):
    request = httpx2.Request("GET", "https://huggingface.co/someone/tiny-pathology-vit/resolve/main/model.safetensors")
    raise GatedRepoError("Cannot access gated repo for url ...", response=httpx2.Response(403, request=request))


def test_gated_repo_without_access_is_one_line(tiny_trunk, monkeypatch):
    monkeypatch.setattr(timm.models, "load_state_dict_from_hf", gated)
    with pytest.raises(ConfigError) as err:
        PatchClassifier("tiny_fm", pretrained=True, trunk=tiny_trunk)
    message = str(err.value)
    assert "\n" not in message and "someone/tiny-pathology-vit" in message and "GatedRepoError: 403" in message
    assert "https://huggingface.co/someone/tiny-pathology-vit" in message and "HF_TOKEN" in message
    assert "huggingface-cli login" in message
    model = PatchClassifier("tiny_fm", pretrained=True, trunk=tiny_trunk, weights_fallback="random")
    assert model.weights_source == "random (no access to someone/tiny-pathology-vit)"


def test_offline_hub_falls_back_as_configured(tiny_trunk, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = PatchClassifier("tiny_fm", pretrained=True, trunk=tiny_trunk, weights_fallback="random")
    assert model.weights_source == "random (hub unavailable)"
    with pytest.raises(ConfigError, match="weights from someone/tiny-pathology-vit are not available") as err:
        PatchClassifier("tiny_fm", pretrained=True, trunk=tiny_trunk)
    assert "\n" not in str(err.value)


def test_hub_weights_load_into_the_card(tiny_trunk, monkeypatch):
    source = tiny(tiny_trunk).net
    trunk_state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    monkeypatch.setattr(timm.models, "load_state_dict_from_hf", lambda repo: dict(trunk_state))
    model = PatchClassifier("tiny_fm", pretrained=True, trunk=tiny_trunk)
    assert model.weights_source == "hf-hub:someone/tiny-pathology-vit"
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in trunk_state.items())
    monkeypatch.setattr(timm.models, "load_state_dict_from_hf",
                        lambda repo: {k: v for k, v in trunk_state.items() if k != "cls_token"})
    with pytest.raises(ConfigError, match=r"weights do not fit test_vit .*missing \['cls_token'\]"):
        PatchClassifier("tiny_fm", pretrained=True, trunk=tiny_trunk)


def test_local_weights_file_loads_into_the_card(tiny_trunk, tmp_path):
    from safetensors.torch import save_file

    source = tiny(tiny_trunk).net
    state = {k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith("head.")}
    save_file(state, tmp_path / "model.safetensors")
    model = PatchClassifier("tiny_fm", weights_path=str(tmp_path / "model.safetensors"), trunk=tiny_trunk)
    assert model.weights_source == f"file:{tmp_path / 'model.safetensors'}"
    assert torch.equal(model.net.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)
    other = {k: v for k, v in state.items()}
    other["pos_embed"] = torch.zeros(1, 5, 64)
    save_file(other, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="weights do not fit test_vit"):
        PatchClassifier("tiny_fm", weights_path=str(tmp_path / "other.safetensors"), trunk=tiny_trunk)


@pytest.mark.parametrize(
    ("trunk", "pooling", "message"),
    [({"architecture": "test_vit", "kwargs": {"num_classes": 0}}, None, "model.trunk.kwargs.num_classes"),
     ({"architecture": "test_vit", "kwargs": {"mlp_layer": "NoSuchMlp"}}, None, "'NoSuchMlp' is not a layer"),
     ({"architecture": "test_vit", "hub": "MahmoodLab"}, None, "model.trunk.hub must be"),
     ({"architecture": "test_vit", "mean": [0.5, 0.5]}, None, "model.trunk.mean must have 3 values"),
     ({"architecture": "test_vit", "weights": "x"}, None, r"unknown key\(s\) \['weights'\]"),
     ({"architecture": "vit_larg_patch16_224"}, None, "unknown backbone 'vit_larg_patch16_224'"),
     (None, "cls", "model.pooling must be one of"),
     ({"architecture": "test_resnet"}, "cls_mean", "needs a timm ViT with a class token")],
)
def test_bad_cards_are_one_line(trunk, pooling, message):
    with pytest.raises(ConfigError, match=message):
        PatchClassifier("test_vit" if trunk is None else "bad_fm", pretrained=False, trunk=trunk, pooling=pooling)


def test_trunk_of_null_is_a_plain_backbone():
    assert Trunk.of(None) is None
    model, source = create_backbone("test_vit", pretrained=False, pooling="avg")
    assert source == "random" and model.global_pool == "avg"


def test_token_pooling_on_a_cnn_is_one_line():
    with pytest.raises(ConfigError, match="model.pooling=token does not fit backbone 'test_resnet'"):
        create_backbone("test_resnet", pretrained=False, pooling="token")


# -- float16 feature cache -------------------------------------------------------------------


class _Patches:
    """What the cache reads: ``read(i) -> (rgb, mask)``, labels, places, no augmentation."""

    def __init__(self, n: int, size: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)
        self.labels = [i % 2 for i in range(n)]
        self.image_size = size
        self.state = types.SimpleNamespace(transform=None)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int):
        return self.images[index].numpy(), None

    def describe(self, index: int):
        return "slide", index, 0


def train_head(model: PatchClassifier, dataset: FeatureDataset, epochs: int = 30) -> None:
    """Adam on the head alone, seeded, over the served features (the training loop's path)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.net.get_classifier().parameters(), lr=1e-2)
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for batch in DataLoader(dataset, batch_size=16, shuffle=True):
            loss = model.loss(model.logits(batch), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def test_float16_cache_halves_memory_and_trains_the_same_head(tiny_trunk, tmp_path):
    patches = _Patches(64)
    model = tiny(tiny_trunk, pooling="cls_mean")
    exact = extract(model, patches, variants=1, batch_size=16, num_workers=0, dtype=torch.float32)
    half = extract(model, patches, variants=1, batch_size=16, num_workers=0)  # the default
    assert half.dtype == torch.float16 and torch.equal(half, exact.half())  # rounded once, from float32
    assert half.nbytes * 2 == exact.nbytes
    torch.save(exact, tmp_path / "fp32.pt"), torch.save(half, tmp_path / "fp16.pt")
    saved = (tmp_path / "fp32.pt").stat().st_size - (tmp_path / "fp16.pt").stat().st_size
    assert saved == pytest.approx(exact.nbytes / 2, abs=1024)  # the same file, less half its payload
    served = FeatureDataset(half, patches)[0]["features"]
    assert served.dtype == torch.float32  # the head reads float32
    heads = {}
    for name, features in (("fp32", exact), ("fp16", half)):
        copy = tiny(tiny_trunk, pooling="cls_mean")
        copy.load_state_dict(model.state_dict())
        train_head(copy, FeatureDataset(features, patches))
        heads[name] = copy
    probs = {k: m.head(exact[:, 0]).softmax(dim=1)[:, 1].detach() for k, m in heads.items()}
    assert probs["fp32"].sub(0.5).abs().max() > 0.3  # the head learnt something
    assert probs["fp16"].sub(probs["fp32"]).abs().max() < 1e-3


def test_feature_cache_options_are_checked():
    with pytest.raises(ConfigError, match="feature_cache.dtype must be one of"):
        FeatureCache(dtype="bfloat8")
    with pytest.raises(ConfigError, match="feature_cache.batch_size must be >= 1"):
        FeatureCache(batch_size=0)


# -- the foundation sweep and its table --------------------------------------------------------

SWEPT = ["resnet50", "densenet201", "efficientnet_b7", "uni", "uni2_h", "virchow2", "h_optimus_0",
         "h_optimus_1", "gigapath"]


def test_foundation_sweep_composes_every_model(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=foundation"], return_hydra_config=True)
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        assert str(cfg.hydra.sweeper.params.model).split(",") == SWEPT
        assert cfg.slides == "test" and cfg.callbacks.feature_cache.dtype == "float16"
        assert cfg.callbacks.feature_cache.batch_size == 128
        assert "cam" in cfg.callbacks
        assert cfg.hydra.callbacks.compare._target_ == "vistumor.runs.compare.CompareCallback"
        for model in SWEPT:
            node = compose("train", overrides=["hparams_search=foundation", f"model={model}"]).model
            assert node.backbone == model and node.freeze == "trunk" and node.image_size == 224
            assert (node.trunk is not None) == (model in PUBLISHED)


def test_table_picks_up_every_methods_localization(tmp_path):
    runs = {"0": {"model": "uni", "weights": "random (hub unavailable)", "test/auroc": 0.8, "test/cam_pointing": 0.5,
                  "test/attention_pointing": 0.75, "test/attention_iou": 0.25, "test/rollout_pointing": 0.5,
                  "params_trainable": 2050, "params_total": 303_352_834},
            "1": {"model": "resnet50", "weights": "imagenet (timm hub)", "test/auroc": 0.9,
                  "test/cam_pointing": 0.625, "test/unknown_iou": 0.1}}
    for name, metrics in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({**metrics, "run_dir": str(tmp_path / name)}))
    table = collect(tmp_path)
    assert list(table.columns) == ["model", "weights", "AUROC", "map pointing", "attention pointing",
                                   "attention IoU", "rollout pointing", "trainable params", "total params", "run"]
    assert table["attention pointing"].tolist()[0] == 0.75 and pd.isna(table["attention pointing"].iloc[1])
    assert table["weights"].tolist()[0] == "random (hub unavailable)"


@pytest.mark.slow  # ~2 min on 2 cores: two trainings, two whole-slide passes, in a subprocess
def test_tiny_foundation_multirun_writes_one_table(tiled, tmp_path):
    """``hparams_search=foundation`` end to end with two tiny models: a CNN and a ViT with
    registers and Virchow2's embedding, through the feature cache and whole slides.

    (Test-time Grad-CAM++ scoring is off: explain/layers.py's probe builds its images under
    Lightning's inference mode and fails on a ViT; its columns are covered above.)"""
    sweep = tmp_path / "sweep"
    overrides = [o for o in train_overrides(tmp_path, tiled.data.root, tiled.tiles_dir)
                 if not o.startswith(("model=", "~callbacks.cam"))]
    command = [sys.executable, "train.py", "-m", "hparams_search=foundation", "model=small_cnn,tiny_fm",
               *overrides, "trainer.max_epochs=1", "callbacks.feature_cache.variants=1",
               "callbacks.cam.every_n_epochs=100", "callbacks.cam.test_score_patches=0", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(sweep / "comparison.csv")
    assert table["model"].tolist() == ["test_resnet", "tiny_fm"] and table["weights"].tolist() == ["random"] * 2
    assert table["AUROC"].between(0, 1).all() and "AUROC 95% CI" in table
    assert (table["trainable params"] == [2 * 96 + 2, 2 * 2 * 64 + 2]).all()  # the heads: 96 and 2 x 64 wide
    assert all((sweep / str(i) / "slides" / "status.csv").is_file() for i in (0, 1))
    assert (sweep / "comparison.md").read_text().count("| tiny_fm |") == 1


def test_grad_cam_plus_plus_maps_through_the_cls_mean_embedding(tiny_trunk):
    model = tiny(tiny_trunk, pooling="cls_mean").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    maps = explainer(model, "gradcam++")(images, 1)
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert (maps.flatten(1).std(dim=1) > 0).all()  # a map over the patch grid, not a constant


def test_table_joins_explain_runs_of_each_checkpoint(tmp_path):
    """``explain.py`` on the sweep's checkpoints (here: attention maps) adds columns to their rows."""
    runs = {}
    for name in ("0", "1"):
        runs[name] = tmp_path / name
        (runs[name] / "checkpoints").mkdir(parents=True)
        metrics = {"model": f"m{name}", "test/auroc": 0.9, "run_dir": str(runs[name])}
        if name == "1":
            metrics["test/attention_pointing"] = 0.5  # logged by the run itself: kept
        (runs[name] / "metrics.json").write_text(json.dumps(metrics))

    def summary(folder, split, checkpoints, pointing):
        models = {f"m{i}": {"checkpoint": str(c), "score_method": "attention", "cam_pointing": pointing,
                            "cam_iou": 0.25, "cam_dice": None} for i, c in enumerate(checkpoints)}
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "summary.json").write_text(json.dumps({"split": split, "models": models}))

    summary("explain_test", "test", [runs["0"] / "checkpoints" / "last.ckpt", runs["1"] / "checkpoints" / "x.ckpt"],
            0.75)
    summary("explain_val", "val", [runs["0"] / "checkpoints" / "last.ckpt"], 0.1)  # another split
    summary("explain_other", "test", [tmp_path / "elsewhere" / "checkpoints" / "last.ckpt"], 0.2)
    table = collect(tmp_path)
    assert table["attention pointing"].tolist() == [0.75, 0.5]
    assert table["attention IoU"].tolist() == [0.25, 0.25] and "attention Dice" not in table
