"""Backbones from torchvision with the two-stream practices: pre-trained weights without downloads,
cross-modality initialisation of the first conv for flow input, a new classifier behind high dropout,
and partial BatchNorm.

Cross-modality init (Wang et al. 2015): the first conv's RGB filters are averaged over the input-channel
axis and the mean is replicated over the 2L flow channels (2 for a flow clip), without rescaling, as in
the paper and TSN: ``w_flow[o, c] = mean_rgb(w[o, :])`` for every flow channel c. Flow input is
normalised to [-1, 1), so the first layer's response to a uniform flow field is the mean filter's response
times 2L; BatchNorm right after conv1 (ResNet, BN-Inception, clip models) absorbs that scale, VGG-16
trains with it as the paper did.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from trainer.config import CLIP_ARCHS, INCEPTIONS, RESNETS, VGGS, TrainConfig
from trainer.errors import WeightsError

log = logging.getLogger("trainer")
# Keys of torchvision's auxiliary classifiers; our models are built without them.
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def first_conv_name(arch: str) -> str:
    """Dotted name of the backbone's first convolution."""
    if arch in RESNETS:
        return "conv1"
    if arch in VGGS:
        return "features.0"
    if arch == "googlenet":
        return "conv1.conv"
    if arch == "inception_v3":
        return "Conv2d_1a_3x3.conv"
    if arch in CLIP_ARCHS:
        return "stem.0"
    raise WeightsError(f"unknown arch {arch!r}")


def classifier_prefixes(arch: str) -> tuple[str, ...]:
    """State-dict prefixes of the layers the new classifier replaces."""
    return ("classifier.6.",) if arch in VGGS else ("fc.",)


def cross_modality_weight(weight, in_channels: int):
    """(O, 3, *k) RGB filters -> (O, in_channels, *k): the mean over RGB replicated over every input channel."""
    mean = weight.mean(dim=1, keepdim=True)
    return mean.expand(weight.shape[0], in_channels, *weight.shape[2:]).clone()


def imagenet_candidates(arch: str) -> list[Path]:
    """Where torchvision keeps this arch's pre-trained weights in the torch hub cache, preferred first."""
    import torch
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    members = [enum.DEFAULT] + [m for m in enum if m is not enum.DEFAULT and "FEATURES" not in m.name]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / os.path.basename(m.url) for m in members]


def resolve_weights(arch: str, pretrained: str, warn: bool = True) -> Path | None:
    """The file to initialise from, or None; WeightsError naming the expected path when it is absent.

    "auto" (the default) takes torchvision's weights from the torch cache when they are there and otherwise
    starts from random weights with a warning (``warn``: this process prints it, rank 0 only), so a bare
    `trainer run` works on any machine.
    """
    if pretrained == "none":
        return None
    if pretrained == "auto":
        found = [p for p in imagenet_candidates(arch) if p.is_file()]
        if not found and warn:
            log.warning("pretrained = auto: no torchvision weights for %s in the torch cache (expected %s); "
                        "training from random weights, far below the papers' accuracy. Copy the file there or "
                        "set pretrained to a weights file.", arch, imagenet_candidates(arch)[0])
        return found[0] if found else None
    if pretrained == "imagenet":
        candidates = imagenet_candidates(arch)
        for path in candidates:
            if path.is_file():
                return path
        what = "Kinetics-400" if arch in CLIP_ARCHS else "ImageNet"
        raise WeightsError(
            f"pretrained = \"imagenet\": torchvision's {what} weights for {arch} are not in the torch cache; "
            f"expected {candidates[0]}. The trainer never downloads: copy the file there (on a machine with "
            f"internet: python -c \"import torchvision; torchvision.models.get_model('{arch}', "
            f"weights='DEFAULT')\"), or set pretrained to the path of a weights file, or --set pretrained=none "
            f"to train from scratch")
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise WeightsError(f"pretrained = {pretrained!r}: no such weights file; give an existing .pth file, "
                           f"\"imagenet\" or \"none\"")
    return path


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a weights file: a plain state dict, or a checkpoint holding one under model/state_dict."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a usable weights file"
        raise WeightsError(f"{path}: cannot read weights ({exc}); give a torch state_dict file") from exc
    if isinstance(data, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    out = {}
    for key, value in data.items():
        for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _module(model, dotted: str):
    for part in dotted.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def _set_module(model, dotted: str, new) -> None:
    parent, _, last = dotted.rpartition(".")
    owner = _module(model, parent) if parent else model
    if last.isdigit():
        owner[int(last)] = new
    else:
        setattr(owner, last, new)


def _new_backbone(arch: str, stream: str, pretrained: bool):
    from torchvision.models import get_model

    if arch == "googlenet":
        # transform_input re-maps ImageNet-normalised RGB to the [-1, 1] range the ported weights expect;
        # flow input is already in [-1, 1).
        return get_model(arch, weights=None, aux_logits=False, init_weights=True,
                         transform_input=pretrained and stream == "spatial")
    if arch == "inception_v3":
        return get_model(arch, weights=None, aux_logits=False, init_weights=True,
                         transform_input=pretrained and stream == "spatial")
    return get_model(arch, weights=None)


def load_backbone_weights(model, arch: str, state: dict[str, Any], in_channels: int, source: str) -> str:
    """Load ``state`` into a freshly built backbone whose first conv already has ``in_channels`` inputs.

    A 3-channel first conv in ``state`` is converted by cross-modality init; the classifier is left out
    (it is replaced anyway). Returns a note on what was done.
    """
    conv = first_conv_name(arch) + ".weight"
    state = {k: v for k, v in state.items() if not k.startswith(_AUX_PREFIXES)}
    state = {k: v for k, v in state.items() if not k.startswith(classifier_prefixes(arch))}
    note = "loaded"
    if conv not in state:
        raise WeightsError(f"{source}: no {conv} in the file; is it a {arch} state dict?")
    src = state[conv]
    if src.shape[1] != in_channels:
        if src.shape[1] != 3:
            raise WeightsError(f"{source}: {conv} has {src.shape[1]} input channels; need 3 (RGB, converted by "
                               f"cross-modality init) or {in_channels}")
        state[conv] = cross_modality_weight(src, in_channels)
        note = f"loaded, {conv} cross-modality initialised (RGB mean replicated to {in_channels} channels)"
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(classifier_prefixes(arch))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:4]}")
        raise WeightsError(f"{source}: does not fit {arch}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)
    return note


def replace_first_conv(model, arch: str, in_channels: int) -> None:
    """Swap the first conv for one with ``in_channels`` inputs (weights set by cross-modality init)."""
    import torch

    name = first_conv_name(arch)
    old = _module(model, name)
    if old.in_channels == in_channels:
        return
    new = type(old)(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, groups=old.groups, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(cross_modality_weight(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _set_module(model, name, new)


def replace_classifier(model, arch: str, num_classes: int, dropout: tuple[float, ...]) -> None:
    """A new classifier (weights N(0, 0.001), bias 0) behind the configured dropout."""
    import torch.nn as nn

    def linear(n_in: int):
        layer = nn.Linear(n_in, num_classes)
        nn.init.normal_(layer.weight, 0.0, 0.001)
        nn.init.zeros_(layer.bias)
        return layer

    if arch in VGGS:
        # classifier: fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8
        model.classifier[2].p, model.classifier[5].p = dropout
        model.classifier[6] = linear(model.classifier[6].in_features)
    elif arch in INCEPTIONS:
        model.dropout.p = dropout[0]
        model.fc = linear(model.fc.in_features)
    else:
        model.fc = nn.Sequential(nn.Dropout(dropout[0]), linear(model.fc.in_features))


def batchnorms(model) -> list:
    import torch.nn as nn

    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_params(model, mode: str) -> None:
    """partial: only the first BN keeps trainable affine parameters; frozen: none does."""
    bns = batchnorms(model)
    keep = bns[:1] if mode == "partial" else [] if mode == "frozen" else bns
    for bn in bns:
        if bn not in keep:
            for p in bn.parameters():
                p.requires_grad_(False)


def set_train_mode(model, mode: str) -> None:
    """model.train(), then BN layers other than the adapting ones back to eval (running stats fixed)."""
    model.train()
    if mode == "train":
        return
    bns = batchnorms(model)
    for bn in bns[1:] if mode == "partial" else bns:
        bn.eval()


def resolve_bn(mode: str, pretrained: bool, warn: bool = True) -> str:
    """The BatchNorm mode to train with: "auto" is partial over pre-trained weights, train over random ones.

    Partial (and frozen) BN keep the running statistics of the initial weights. Pre-trained weights carry
    ImageNet statistics; random ones carry mean 0 / variance 1, which match no layer's activations: a deep
    net (resnet101) then blows up its logits and the loss turns NaN within a few steps.
    """
    if mode == "auto":
        return "partial" if pretrained else "train"
    if mode in ("partial", "frozen") and not pretrained and warn:
        log.warning("bn = %s with random initial weights: the fixed BatchNorm statistics are the untrained "
                    "mean 0 / variance 1; deep backbones diverge (loss NaN). Use bn = auto or train when training "
                    "from scratch.", mode)
    return mode


def build_model(cfg: TrainConfig, num_classes: int, warn: bool = True, init: dict[str, Any] | None = None):
    """The network of one stream: backbone, initial weights, first conv for 2L channels, new classifier.

    Returns (model, init) where init = {"note": where the initial weights came from, "pretrained": whether
    they were pre-trained, "bn": the resolved BatchNorm mode}; it is stored in checkpoints. Give the ``init``
    of a checkpoint whose weights are loaded next (resume, test): the pre-trained file is then not read (it
    need not exist any more), and what depended on it (input transform, bn = auto) is taken from ``init``.
    ``warn``: this process prints the warnings (rank 0 only under torchrun).
    """
    if init is None:
        weights = resolve_weights(cfg.arch, cfg.pretrained, warn)
        pretrained = weights is not None
        bn = resolve_bn(cfg.bn, pretrained, warn)
    else:
        weights, pretrained, bn = None, bool(init["pretrained"]), str(init["bn"])
    model = _new_backbone(cfg.arch, cfg.stream, pretrained)
    replace_first_conv(model, cfg.arch, cfg.in_channels)
    if init is not None:
        note = str(init["note"])
    elif weights is not None:
        note = f"{weights}: " + load_backbone_weights(model, cfg.arch, read_state_dict(weights), cfg.in_channels,
                                                      str(weights))
    else:
        note = f"random initialisation (pretrained = {cfg.pretrained})"
    if init is None:
        note += f"; bn = {cfg.bn}" + (f" -> {bn}" if cfg.bn != bn else "")
    replace_classifier(model, cfg.arch, num_classes, cfg.dropout)
    freeze_bn_params(model, bn)
    return model, {"note": note, "pretrained": pretrained, "bn": bn}


def saved_init(state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The ``init`` record of a checkpoint (older checkpoints kept only the note; bn was never auto then)."""
    init = state.get("init")
    if isinstance(init, dict):
        return init
    note = str(init or "")
    return {"note": note, "pretrained": bool(note) and not note.startswith("random"), "bn": cfg.bn}


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only (not on biases or BN), trainable parameters only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
