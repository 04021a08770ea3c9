"""Attention as an explanation: rollout's arithmetic by hand, the probabilities read through
fused attention equal to timm's own unfused ones, a hand-set ViT whose class token attends to
known tokens, and a one-line refusal for a model without attention."""

from __future__ import annotations

import pytest
import torch
from test_cam_layouts import Classifier, blue_vit, images, quadrant_image, vit

from vistumor.errors import ConfigError
from vistumor.explain.attention import AttentionMap, AttentionRollout, rollout_step
from vistumor.explain.methods import explainer
from vistumor.model.classifier import PatchClassifier


def test_rollout_of_two_hand_written_layers():
    # tokens (cls, p1, p2); layer 1: cls and p1 look at p1, p2 at itself; layer 2: cls looks at p2
    a1 = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    a2 = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    # (A + I) / 2: layer 1 [[.5, .5, 0], [0, 1, 0], [0, 0, 1]]; layer 2 [[.5, 0, .5], [0, 1, 0], [0, 0, 1]]
    rolled = rollout_step(rollout_step(None, a1), a2)
    # cls row: .5 * [.5, .5, 0] + .5 * [0, 0, 1]
    assert torch.allclose(rolled[0, 0], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.allclose(rolled[0, 1:], torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def unfused_reference(net, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's head-averaged attention as timm computes it unfused (``attn_drop``'s input)."""
    probs, handles = [], []
    for block in net.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(i[0].mean(1))))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        for block in net.blocks:
            block.attn.fused_attn = True
    return probs


@pytest.mark.parametrize("kwargs", [{"qk_norm": True, "reg_tokens": 2},
                                    {"class_token": False, "reg_tokens": 2, "global_pool": "avg"}])
def test_fused_attention_read_as_timm_computes_it_unfused(kwargs):
    model = Classifier(vit(**kwargs))
    net = model.net
    assert all(b.attn.fused_attn for b in net.blocks)  # the hooks must not need the slow path
    x = images(4).float()
    layers = unfused_reference(net, x / 127.5 - 1)
    prefix = net.num_prefix_tokens

    def query(total):  # the class token's row, or the mean patch-token row (average pooled)
        return total[:, 0] if net.cls_token is not None else total[:, prefix:].mean(1)

    eye = torch.eye(layers[0].shape[-1])
    rolled = None
    for a in layers:
        step = (a + eye) / (a + eye).sum(-1, keepdim=True)
        rolled = step if rolled is None else step @ rolled
    expected = {"attention": query(layers[-1])[:, prefix:], "rollout": query(rolled)[:, prefix:]}
    for cls in (AttentionMap, AttentionRollout):
        _, raw = cls(model).raw(x, None)
        assert raw.shape == (4, 4, 4)
        assert torch.allclose(raw.flatten(1), expected[cls.name], atol=1e-5), cls.name


def test_the_class_token_attends_where_it_was_set_to():
    model = blue_vit()
    image, _ = quadrant_image()
    blue = torch.zeros(4, 4)
    blue[:2, 2:] = 0.25  # every token attends to the four blue tokens alike, nothing else
    _, last = AttentionMap(model).raw(image.float(), None)
    assert torch.allclose(last[0], blue, atol=1e-6)
    # six identical layers A = 1 a^T: ((I + A) / 2)^6 = I / 64 + (63 / 64) A
    _, rolled = AttentionRollout(model).raw(image.float(), None)
    assert torch.allclose(rolled[0], blue * 63 / 64, atol=1e-6)


def test_attention_maps_are_batched_sized_and_leave_no_hooks():
    model = Classifier(vit(dynamic_img_size=True))
    x = images(5, 48)
    for method in ("attention", "rollout"):
        whole = explainer(model, method, batch_size=32)(x)
        assert whole.shape == (5, 48, 48) and float(whole.min()) >= 0 and float(whole.max()) <= 1
        assert torch.allclose(explainer(model, method, batch_size=2)(x), whole, atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())


def test_a_model_without_attention_is_refused_in_one_line():
    from vistumor.infer.engine import ModelScorer

    resnet = PatchClassifier("test_resnet", pretrained=False)
    for method in ("attention", "rollout"):
        with pytest.raises(ConfigError, match=f"'{method}' needs a vision transformer.*test_resnet has none"):
            explainer(resnet, method)
        with pytest.raises(ConfigError, match="test_resnet has none"):
            ModelScorer(resnet, torch.device("cpu"), method=method)
    with pytest.raises(ConfigError, match=r"infer.cam.method must be one of gradcam\+\+, gradcam, attention, "
                                          r"rollout, got 'saliency'"):
        ModelScorer(resnet, torch.device("cpu"), method="saliency")


def test_the_image_size_must_match_the_token_count():
    model = Classifier(vit())  # a fixed 64 px model read as if at 48 px
    method = AttentionMap(model)
    with pytest.raises(ConfigError, match=r"attention over 17 tokens is not 1 prefix \+ 3x3 patch tokens"):
        method.to_grid(torch.zeros(1, 17, 17), (48, 48))
