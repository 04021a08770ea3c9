"""The explanation engine: known-answer maps, the fast path against pytorch-grad-cam,
target-layer discovery, and a model left exactly as it was found."""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest
import torch
from torch import nn

from vistumor.errors import ConfigError
from vistumor.explain.base import scale_maps
from vistumor.explain.layers import find_target_layer
from vistumor.explain.methods import ATTENTION, CAM_METHODS, MASK, METHODS
from vistumor.explain.methods import explainer as Explainer
from vistumor.model.classifier import PatchClassifier

SIZE = 64
SQUARE = 12
#: top-left corners (row, col) of the bright square, one image each
CORNERS = ((4, 4), (40, 9), (23, 45), (50, 50))


class BrightSpot(nn.Module):
    """Tumor evidence is brightness: each channel fires where the 3x3 mean of a 0-255 image
    exceeds its threshold; the tumor logit is their spatial mean, the normal logit its negative.

    On a dark image only a bright square fires, so every honest map must peak inside it.
    """

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 4, 3, padding=1)
        scale = torch.tensor([1.0, 1.5, 2.0, 2.5])
        threshold = torch.tensor([0.4, 0.5, 0.6, 0.7])
        with torch.no_grad():
            conv.weight.copy_(scale.view(4, 1, 1, 1).expand(4, 3, 3, 3) / (27 * 255.0))
            conv.bias.copy_(-scale * threshold)
        self.features = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2))  # 32 x 32: maps are upsampled
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(images.float())).flatten(1))


def bright_squares(corners=CORNERS, seed: int = 0) -> torch.Tensor:
    """Dark noisy ``uint8`` images, each with one bright noisy square."""
    rng = np.random.default_rng(seed)
    images = rng.integers(10, 31, (len(corners), 3, SIZE, SIZE))
    for image, (r, c) in zip(images, corners, strict=True):
        image[:, r : r + SQUARE, c : c + SQUARE] = rng.integers(230, 251, (3, SQUARE, SQUARE))
    return torch.from_numpy(images.astype(np.uint8))


def peaks(maps: torch.Tensor) -> list[tuple[int, int]]:
    flat = maps.flatten(1).argmax(1)
    return [(int(i) // maps.shape[-1], int(i) % maps.shape[-1]) for i in flat]


def inside(peak: tuple[int, int], corner: tuple[int, int]) -> bool:
    return all(c <= p < c + SQUARE for p, c in zip(peak, corner, strict=True))


@pytest.fixture(scope="module")
def spot() -> BrightSpot:
    return BrightSpot().eval()


@pytest.fixture(scope="module")
def resnet() -> PatchClassifier:
    torch.manual_seed(0)
    return PatchClassifier("test_resnet", pretrained=False)  # frozen trunk: only the head trains


@pytest.fixture(scope="module")
def efficientnet() -> PatchClassifier:
    torch.manual_seed(1)
    return PatchClassifier("test_efficientnet", pretrained=False)


# -- known answers -------------------------------------------------------------------------------


def test_bright_spot_calls_the_squares_tumor(spot):
    assert (spot(bright_squares()).argmax(1) == 1).all()
    assert (spot(torch.full((1, 3, SIZE, SIZE), 20, dtype=torch.uint8)) == 0).all()


@pytest.mark.parametrize(
    ("method", "fast"),
    [("gradcam++", True), ("gradcam", True), ("gradcam++", False), ("gradcam", False), ("hirescam", False),
     ("xgradcam", False), ("layercam", False), ("saliency", False), ("smoothgrad", False)],
)
def test_map_peaks_inside_the_bright_square(spot, method, fast):
    explainer = Explainer(spot, method, fast=fast, smooth_samples=4)
    maps = explainer(bright_squares())
    assert maps.shape == (len(CORNERS), SIZE, SIZE)
    assert maps.dtype == torch.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    for peak, corner in zip(peaks(maps), CORNERS, strict=True):
        assert inside(peak, corner), (method, peak, corner)
    if method in CAM_METHODS:
        assert explainer.layer_name == "features"


@pytest.mark.parametrize("method", ["eigencam", "scorecam"])
def test_gradient_free_cams_run(spot, method):
    maps = Explainer(spot, method)(bright_squares()[:2])
    assert maps.shape == (2, SIZE, SIZE)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6
    assert torch.isfinite(maps).all()


def test_targets_per_image_and_predicted_class(spot):
    images = bright_squares()
    explainer = Explainer(spot, "gradcam")
    tumor = explainer(images, targets=1)
    mixed = explainer(images, targets=[1, 0, 1, 0])
    assert torch.equal(mixed[[0, 2]], tumor[[0, 2]])
    assert (mixed[[1, 3]] == 0).all()  # all normal evidence is negative: an empty map
    assert torch.equal(explainer(images, targets=None), tumor)  # every square is called tumor


def test_batches_are_independent(spot):
    images = bright_squares()
    whole = Explainer(spot, "gradcam++", batch_size=32)(images)
    assert torch.allclose(Explainer(spot, "gradcam++", batch_size=3)(images), whole, atol=1e-6)


def test_empty_batch(spot):
    assert Explainer(spot, "gradcam++")(bright_squares()[:0]).shape == (0, SIZE, SIZE)


def test_scale_maps_min_max_then_resize():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])
    assert torch.allclose(scale_maps(maps), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]), atol=1e-6)
    big = scale_maps(maps, (4, 4))
    assert big.shape == (1, 4, 4)
    assert float(big.min()) == 0 and float(big.max()) == pytest.approx(1, abs=1e-6)
    assert tuple(peaks(big)[0]) == (3, 3)


# -- the fast path ------------------------------------------------------------------------------


def random_images(n: int = 3, size: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


@pytest.mark.parametrize("method", ["gradcam++", "gradcam"])
@pytest.mark.parametrize("backbone", ["resnet", "efficientnet"])
def test_fast_path_equals_pytorch_grad_cam(request, backbone, method):
    model = request.getfixturevalue(backbone)
    images = random_images()
    reference = Explainer(model, method, fast=False)(images)
    assert reference.shape == (3, 96, 96)
    assert (reference.flatten(1).amax(1) > 0.99).all()  # non-trivial maps
    fast = Explainer(model, method, fast=True)(images)
    assert float((fast - reference).abs().max()) <= 1e-4
    with torch.inference_mode():  # as in Lightning's validation loop
        inner = random_images()
        in_validation = Explainer(model, method, fast=True)(inner)
    assert float((in_validation - reference).abs().max()) <= 1e-4


def test_fast_path_only_for_gradcam_methods(spot):
    assert Explainer(spot, "gradcam++").fast and Explainer(spot, "gradcam").fast
    assert not Explainer(spot, "hirescam").fast
    assert not Explainer(spot, "gradcam", fast=False).fast


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["gradcam++", "gradcam"])
@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
def test_fast_path_on_cuda_equals_pytorch_grad_cam(backbone, method):
    torch.manual_seed(0)
    model = PatchClassifier(backbone, pretrained=False).cuda()  # channels-last input on CUDA
    images = random_images(8, 128)
    reference = Explainer(model, method, fast=False)(images)
    with torch.inference_mode():
        fast = Explainer(model, method, fast=True)(images.cuda())
    assert fast.device.type == "cpu" and fast.shape == (8, 128, 128)
    assert (reference.flatten(1).amax(1) > 0.99).sum() >= 4  # random weights: a few maps may be empty
    assert float((fast - reference).abs().max()) <= 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_method_on_cuda_leaves_the_model_as_found():
    torch.manual_seed(0)
    model = PatchClassifier("test_resnet", pretrained=False).cuda().train()
    before = snapshot(model)
    images = random_images(2, 64)
    for method in (m for m in METHODS if m not in (*ATTENTION, MASK)):  # a CNN: no attention, no mask
        maps = Explainer(model, method, smooth_samples=2)(images)
        assert maps.device.type == "cpu" and maps.shape == (2, 64, 64), method
        assert torch.isfinite(maps).all() and float(maps.max()) <= 1 + 1e-6, method
        assert_as_found(model, before)
    assert all(p.device.type == "cuda" for p in model.parameters())


# -- target layer ------------------------------------------------------------------------------


def output_shape(model: nn.Module, name: str, size: int = 96) -> torch.Size:
    shapes = []
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        handle.remove()
    return shapes[-1]


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [("test_resnet", {"layer4"}), ("test_efficientnet", {"bn2"}),
     ("test_convnext", {"norm_pre", "stages", "stages.3"})],
)
def test_target_layer_is_the_last_feature_stage(backbone, expected):
    torch.manual_seed(0)
    model = PatchClassifier(backbone, pretrained=False)
    name = Explainer(model, "gradcam++").layer_name
    assert name in expected
    assert name == find_target_layer(model.net)
    shape = output_shape(model.net, name)
    assert len(shape) == 4 and shape[-1] > 1 and shape[-2] > 1  # a feature map, not pooled


def test_target_layer_override(resnet):
    explainer = Explainer(resnet, "gradcam", target_layer="layer3")
    assert explainer.layer_name == "layer3" and explainer.layer is resnet.net.layer3
    maps = explainer(random_images(2))
    assert maps.shape == (2, 96, 96)
    assert not torch.allclose(maps, Explainer(resnet, "gradcam")(random_images(2)))


def test_unknown_target_layer_names_close_ones(resnet):
    with pytest.raises(ConfigError, match=r"'layer44' does not exist.*layer4"):
        Explainer(resnet, "gradcam++", target_layer="layer44")
    with pytest.raises(ConfigError, match="does not exist"):
        find_target_layer(resnet.net, "")


def test_model_without_feature_map():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ConfigError, match="no spatial feature map"):
        find_target_layer(flat, image_size=8)


def test_unknown_method_lists_known_ones(spot):
    with pytest.raises(ConfigError, match=r"unknown explanation method 'gradcam\+'; known") as err:
        Explainer(spot, "gradcam+")
    for name in METHODS:
        assert name in str(err.value)


# -- the model as it was found ------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": {n: m.training for n, m in model.named_modules()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: (p.grad, None if p.grad is None else p.grad.clone())
                  for n, p in model.named_parameters()},
        "hooks": {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
                  for n, m in model.named_modules()},
    }


def assert_as_found(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    for name, (grad, value) in before["grads"].items():
        now, _ = after["grads"][name]
        assert now is grad, name
        assert grad is None or torch.equal(now, value), name
    assert after["hooks"] == before["hooks"]


@pytest.mark.parametrize("mode", ["train", "eval-in-inference-mode"])
def test_model_left_as_found(mode):
    torch.manual_seed(0)
    model = PatchClassifier("test_resnet", pretrained=False)  # frozen trunk
    model.train(mode == "train")
    model.net.layer1.train()  # an odd mix: a frozen stage in train mode
    model.net.fc.weight.grad = torch.full_like(model.net.fc.weight, 0.5)
    model.net.layer4[0].conv1.weight.grad = torch.ones_like(model.net.layer4[0].conv1.weight)
    kept = model.net.layer4.register_forward_hook(lambda m, i, o: None)  # the user's own hook
    before = snapshot(model)
    assert before["modes"]["net.fc"] == (mode == "train") and not before["modes"]["net.layer2"]
    assert before["flags"]["net.fc.weight"] and not before["flags"]["net.layer1.0.conv1.weight"]
    images = random_images(2, 64)
    runs = [("gradcam++", True), ("gradcam", True), *((m, False) for m in CAM_METHODS),
            ("saliency", False), ("smoothgrad", False)]
    context = torch.inference_mode() if mode != "train" else torch.enable_grad()
    with context:
        for method, fast in runs:
            maps = Explainer(model, method, fast=fast, smooth_samples=2)(images)
            assert maps.shape == (2, 64, 64), method
            assert_as_found(model, before)
    kept.remove()


def test_frozen_trunk_keeps_its_batchnorm_statistics(resnet):
    stats = {n: b.clone() for n, b in resnet.named_buffers() if "running" in n}
    resnet.train()
    try:
        Explainer(resnet, "gradcam++", fast=False)(random_images(2, 64))
        Explainer(resnet, "saliency")(random_images(2, 64))
    finally:
        resnet.eval()
    assert all(torch.equal(b, stats[n]) for n, b in resnet.named_buffers() if n in stats)


def live_tensors() -> int:
    gc.collect()
    return sum(issubclass(type(obj), torch.Tensor) for obj in gc.get_objects())


@pytest.mark.parametrize("fast", [True, False])
def test_repeated_calls_do_not_grow_memory(resnet, fast):
    images = random_images(8, 64)
    process = psutil.Process()

    def explain():
        return Explainer(resnet, "gradcam++", fast=fast)(images)

    for _ in range(5):  # warm-up: allocator pools, lazy imports
        explain()
    tensors, rss = live_tensors(), process.memory_info().rss
    for _ in range(30):
        explain()
    assert live_tensors() <= tensors
    assert process.memory_info().rss - rss < 24 * 2**20
    assert all(not m._forward_hooks for m in resnet.modules())
