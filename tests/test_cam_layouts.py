"""CAMs on every feature layout: the default layer of a ViT (with and without class and
register tokens, at a dynamic size), Swin and ConvNeXt, the fast maps equal to
pytorch-grad-cam's with the tutorials' own reshape transforms, unreadable layers refused,
and a hand-built ViT whose right answer is known, in the patch figure and on a slide."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from vistumor.errors import ConfigError
from vistumor.explain.layers import TOKENS, CamLayer, resolve_layer
from vistumor.explain.localization import scores
from vistumor.explain.methods import explainer
from vistumor.model.classifier import PatchClassifier

SIZE = 64
LIBRARY = {"gradcam++": GradCAMPlusPlus, "gradcam": GradCAM}


class Classifier(nn.Module):
    """A timm network on 0-255 images, as :class:`PatchClassifier` holds it (``.net``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 127.5 - 1)


def vit(**kwargs) -> nn.Module:
    """A two-block ViT of width 64 on 64 px (a 4 x 4 patch grid), random weights."""
    torch.manual_seed(0)
    args = {"img_size": SIZE, "depth": 2, "embed_dim": 64, "num_heads": 2, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, **args).eval()


def swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=2, img_size=SIZE,
                             window_size=4, depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 1, 1)).eval()


class ClassMean(nn.Module):
    """A cls + mean-patch embedding (Virchow2's rule) in timm's ``attn_pool`` slot."""

    def __init__(self, prefix: int):
        super().__init__()
        self.prefix = prefix

    def forward(self, x):
        return torch.cat([x[:, 0], x[:, self.prefix :].mean(1)], dim=1)


def cls_mean_vit() -> nn.Module:
    net = vit(reg_tokens=2)
    net.attn_pool, net.pool_include_prefix = ClassMean(net.num_prefix_tokens), True
    net.head = nn.Linear(2 * net.embed_dim, 2)
    return net.eval()


# the tutorials' reshape transforms, written out here, not taken from the package
def vit_reshape(prefix: int, h: int, w: int):
    return lambda t: t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)


def swin_reshape(t):
    return t.permute(0, 3, 1, 2)


#: (model, expected default layer, reference reshape transform, image size)
CASES = {
    "vit": (lambda: vit(), "blocks.1.norm1", vit_reshape(1, 4, 4), SIZE),
    "vit_registers": (lambda: vit(reg_tokens=4), "blocks.1.norm1", vit_reshape(5, 4, 4), SIZE),
    "vit_registers_avg": (lambda: vit(class_token=False, reg_tokens=1, global_pool="avg"), "norm",
                          vit_reshape(1, 4, 4), SIZE),
    "vit_dynamic_48px": (lambda: vit(dynamic_img_size=True), "blocks.1.norm1", vit_reshape(1, 3, 3), 48),
    "vit_qk_norm": (lambda: vit(qk_norm=True), "blocks.1.norm1", vit_reshape(1, 4, 4), SIZE),
    "vit_cls_mean": (cls_mean_vit, "norm", vit_reshape(3, 4, 4), SIZE),
    "swin": (swin, "norm", swin_reshape, SIZE),
    "convnext": (lambda: PatchClassifier("test_convnext", pretrained=False), "norm_pre", None, SIZE),
}


def images(n: int = 3, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def reference(model, layer: str, reshape, x: torch.Tensor, method: str = "gradcam++") -> torch.Tensor:
    """pytorch-grad-cam's map of the tumor class, on its own terms."""
    module = dict(model.named_modules())[layer]
    with LIBRARY[method](model=model, target_layers=[module], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x.float().requires_grad_(True), targets=[ClassifierOutputTarget(1)] * len(x))
    return torch.from_numpy(maps)


@pytest.mark.parametrize("method", ["gradcam++", "gradcam"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_map_equals_pytorch_grad_cam_with_the_tutorial_reshape(case, method):
    build, expected, reshape, size = CASES[case]
    model = build()
    model = model if isinstance(model, PatchClassifier) else Classifier(model)
    for p in model.parameters():
        p.requires_grad_(False)
    x = images(size=size)
    fast = explainer(model, method)
    assert fast.layer_name == expected
    ref = reference(model, f"net.{expected}", reshape, x, method)
    assert (ref.flatten(1).amax(1) > 0.99).sum() >= 2  # real maps (random weights: one may be empty)
    assert float((fast(x) - ref).abs().max()) <= 1e-4
    library = explainer(model, method, fast=False)(x)  # the adapter reads the layer the same way
    assert float((library - ref).abs().max()) <= 1e-4


def old_rule(model: nn.Module, size: int = SIZE) -> str:
    """The rule on main before tokens were understood: the last 4-D output larger than 1x1."""
    seen = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.append((n, o.shape)))
               for n, m in model.named_modules() if n]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return [n for n, s in seen if len(s) == 4 and s[-1] * s[-2] > 1][-1]


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_the_old_layer_choice_read_attention_keys_as_a_feature_map():
    model = Classifier(vit(reg_tokens=4))
    x = images()
    old = old_rule(model.net)
    assert old == "blocks.1.attn.k_norm"  # heads x tokens x head width, read as C x h x w
    ref = reference(model, "net.blocks.1.norm1", vit_reshape(5, 4, 4), x)
    wrong = reference(model, f"net.{old}", None, x)  # what main computed: the keys as a feature map
    assert correlation(wrong, ref) < 0.5
    assert correlation(explainer(model, "gradcam++")(x), ref) > 0.9999
    with pytest.raises(ConfigError, match=r"'blocks.1.attn.k_norm' outputs \(1, 2, 21, 32\).*tokens \(N, 5\+4x4, C\)"):
        explainer(model, "gradcam++", target_layer="blocks.1.attn.k_norm")


def test_swins_channels_last_norm_was_read_as_channels_first():
    model = Classifier(swin())
    x = images()
    assert old_rule(model.net) == "norm"  # the right layer, read the wrong way round
    ref = reference(model, "net.norm", swin_reshape, x)
    assert correlation(reference(model, "net.norm", None, x), ref) < 0.5
    assert correlation(explainer(model, "gradcam++")(x), ref) > 0.9999


def test_a_named_layer_is_read_in_its_layout_or_refused():
    layer = resolve_layer(vit(), "blocks.0")
    assert layer.layout == TOKENS and layer.prefix == 1
    assert resolve_layer(vit(), "patch_embed.proj").layout == "nchw"
    assert resolve_layer(swin(), "layers.2").layout == "nhwc"
    with pytest.raises(ConfigError, match=r"'layers.3.blocks.0.mlp' outputs \(1, 4, 128\)"):
        resolve_layer(swin(), "layers.3.blocks.0.mlp")  # Swin's flattened window tokens


def test_a_token_count_off_the_grid_is_refused_in_one_line():
    layer = CamLayer("blocks.1", nn.Identity(), TOKENS, prefix=1, net=vit())
    assert layer.feature_map(torch.zeros(2, 17, 8), (SIZE, SIZE)).shape == (2, 8, 4, 4)
    with pytest.raises(ConfigError, match=r"'blocks.1' outputs \(2, 20, 8\).*\(N, 1\+4x4, C\)"):
        layer.feature_map(torch.zeros(2, 20, 8), (SIZE, SIZE))


def test_one_reshape_for_the_fast_path_and_the_library():
    layer = resolve_layer(vit(reg_tokens=4))
    tokens = torch.arange(2 * 21 * 3, dtype=torch.float32).reshape(2, 21, 3)
    expected = vit_reshape(5, 4, 4)(tokens)
    assert torch.equal(layer.feature_map(tokens, (SIZE, SIZE)), expected)
    assert torch.equal(layer.reshape_transform((SIZE, SIZE))(tokens), expected)
    assert resolve_layer(PatchClassifier("test_resnet", pretrained=False)).reshape_transform((SIZE, SIZE)) is None


# -- a ViT whose right answer is known -------------------------------------------------------------

PINK, BLUE = (214, 112, 186), (60, 40, 160)


def blue_vit() -> PatchClassifier:
    """``test_vit`` set by hand: a patch token's channel 0 is its blueness (blue - red in
    0-255 units / 25), channel 1 a constant. Every block attends from every token to the
    bluest tokens (``q = 4 e0``, ``k = 4 LayerNorm(x)_0``); blocks 0-4 add nothing (zero
    values and MLPs); in the last the class token takes in channel 0 of the tokens it
    attends to, and the tumor logit is 3x its channel 0. Blue tissue is tumor, pink is not,
    and only blue tokens can be hot."""
    torch.manual_seed(0)
    model = PatchClassifier("test_vit", pretrained=False, image_size=SIZE).eval()
    net, dim = model.net, model.net.embed_dim
    mean, std = model.mean.flatten(), model.std.flatten()  # 0-255 units
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for norm in [b.norm1 for b in net.blocks] + [b.norm2 for b in net.blocks] + [net.norm]:
            norm.weight.fill_(1.0)
        proj = net.patch_embed.proj  # 16 x 16 patches of normalised input
        proj.weight[0, 2] = std[2] / (16 * 16 * 25.0)
        proj.weight[0, 0] = -std[0] / (16 * 16 * 25.0)
        proj.bias[0] = (mean[2] - mean[0]) / 25.0
        proj.bias[1] = 1.0
        net.cls_token[0, 0, 1] = 1.0
        for block in net.blocks:
            attn, head_dim = block.attn, block.attn.head_dim
            for h in range(attn.num_heads):
                attn.qkv.bias[h * head_dim] = 4.0  # q = 4 e0 for every token
                attn.qkv.weight[dim + h * head_dim, 0] = 4.0  # k = 4 LayerNorm(x)_0
        last = net.blocks[-1].attn
        for h in range(last.num_heads):
            last.qkv.weight[2 * dim + h * last.head_dim, 0] = 1.0  # v_0 = LayerNorm(x)_0
            last.proj.weight[0, h * last.head_dim] = 1.0 / last.num_heads
        net.head.weight[1, 0], net.head.weight[0, 0] = 3.0, -3.0
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def quadrant_image() -> tuple[torch.Tensor, np.ndarray]:
    """Pink tissue with blue tissue in the top-right quadrant (four of the 16 tokens)."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = PINK
    image[: SIZE // 2, SIZE // 2 :] = BLUE
    mask = np.zeros((SIZE, SIZE), bool)
    mask[: SIZE // 2, SIZE // 2 :] = True
    return torch.from_numpy(image).permute(2, 0, 1)[None], mask


@pytest.mark.parametrize("method", ["gradcam++", "gradcam", "attention", "rollout"])
def test_the_patch_figure_lights_up_the_blue_quadrant(method):
    model = blue_vit()
    image, mask = quadrant_image()
    assert model(image).softmax(1)[0, 1] > 0.9  # called tumor
    pink = torch.from_numpy(np.full((1, 3, SIZE, SIZE), 0, np.uint8) + np.array(PINK, np.uint8)[None, :, None, None])
    assert model(pink).softmax(1)[0, 1] < 0.1
    cam = explainer(model, method)(image, 1)[0].numpy()
    got = scores(cam, mask)
    assert got["pointing"] == 1.0 and got["energy"] > 0.8 and got["iou"] > 0.6, got


def test_the_whole_slide_canvas_is_hot_over_the_blue_tissue(tmp_path):
    from test_infer_slides import TILING, write_slide

    from vistumor.infer.engine import ModelScorer
    from vistumor.infer.inputs import SlideInput
    from vistumor.infer.params import InferParams
    from vistumor.infer.slide_run import ModelRun, run_slide

    image = np.full((1024, 1536, 3), 245, np.uint8)
    image[128:-128, 128:-128] = PINK
    image[256:640, 768:1152] = BLUE  # 384 px of blue: a region wider than a 256 px patch
    slide = write_slide(tmp_path / "s.tif", image, downsamples=(2,))
    model = blue_vit()
    for method in ("gradcam++", "gradcam", "attention", "rollout"):
        run = ModelRun(method, ModelScorer(model, torch.device("cpu"), method=method), "x", TILING, SIZE,
                       tmp_path / method)
        run_slide(SlideInput("s", slide), [run], InferParams())
        canvas = np.load(run.path("cams", "s", ".npy"))
        sidecar = json.loads(run.path("cams", "s", ".json").read_text())
        assert sidecar["method"] == method and method in sidecar["value"]
        cell = sidecar["cell_size_px"]  # level-0 px per canvas value
        rows, cols = np.indices(canvas.shape) * cell + cell / 2
        blue = (rows >= 256) & (rows < 640) & (cols >= 768) & (cols < 1152)
        inner = (rows >= 320) & (rows < 576) & (cols >= 832) & (cols < 1088)
        far = ~((rows < 896) & (cols >= 512) & (cols < 1408))  # a patch (256 px) or more from the blue
        peak = np.nanmax(canvas)
        assert blue[np.unravel_index(np.nanargmax(canvas), canvas.shape)], method
        assert np.nanmin(canvas[inner]) > 0.3 * peak, method
        assert np.nanmax(np.nan_to_num(canvas[far])) < 0.05 * peak, method


@pytest.mark.parametrize("case", ["vit_registers", "swin"])
def test_every_library_cam_reads_the_layer_through_the_same_reshape(case):
    from vistumor.explain.methods import CAM_METHODS

    model = Classifier(CASES[case][0]())
    x = images(2)
    for method in (m for m in CAM_METHODS if m != "scorecam"):  # scorecam: a forward per channel
        maps = explainer(model, method, fast=False, batch_size=2)(x)
        assert maps.shape == (2, SIZE, SIZE) and torch.isfinite(maps).all(), method
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1 + 1e-6, method


def test_a_vit_map_under_inference_mode_as_in_lightnings_test_loop():
    """Lightning tests under inference_mode: the layer probe's own input must still take grad
    (it was made outside ``inference_mode(False)`` and every ViT's CAM monitor crashed at test)."""
    model = CASES["vit"][0]()
    x = images()
    with torch.inference_mode():
        maps = explainer(model, "gradcam++")(x, 1)
    assert torch.as_tensor(maps).shape[0] == len(x)
