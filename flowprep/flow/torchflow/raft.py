"""RAFT flow (Teed & Deng, ECCV 2020) through torchvision's raft_small / raft_large, batched, CPU or CUDA.

    from flowprep.flow.torchflow.raft import raft_flow
    flow = raft_flow(prev, nxt, model="small", iterations=12, device="cuda")   # (B, H, W, 2) float32

Weights are never downloaded. They come from ``weights`` (a file) or, when that is "", from the file that
torchvision itself would download for ``Raft_Large_Weights.DEFAULT`` / ``Raft_Small_Weights.DEFAULT``:
``torch.hub.get_dir()/checkpoints/<basename of the weights URL>`` (``$TORCH_HOME/hub/checkpoints/...``).
A missing, unreadable or mismatched file raises RaftWeightsError, which names the file and the fix.

A weights file is a state dict saved with ``torch.save(model.state_dict(), path)``, as torchvision ships
them, or a checkpoint dict holding one under "model" (torchvision's reference training scripts) or
"state_dict". It is read with ``torch.load(..., weights_only=True)``, so it cannot run code.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import torch

from flowprep.errors import FlowprepError

__all__ = ["raft_flow", "weights_identity", "weights_file", "cache_file", "fetch_command", "RaftWeightsError",
           "MODELS", "MIN_SIZE"]

# model -> (torchvision builder, its weights enum); the enum's DEFAULT names the file of the torch cache
MODELS = {"large": ("raft_large", "Raft_Large_Weights"), "small": ("raft_small", "Raft_Small_Weights")}
# torchvision's RAFT needs frames of at least 128x128 (its weights' "min_size"): the correlation pyramid
# halves the 1/8-resolution feature maps 3 times and needs 2 cells left. Smaller frames are padded up to it.
MIN_SIZE = 128
CHECKPOINT_KEYS = ("model", "state_dict")  # where a checkpoint dict may hold the state dict

_MODELS_BUILT: dict[tuple, torch.nn.Module] = {}  # (model, file, mtime, size, device) -> model in eval mode
_DIGESTS: dict[tuple, str] = {}  # (file, mtime, size) -> sha256 hex
_LOCK = threading.Lock()


class RaftWeightsError(FlowprepError):
    """RAFT weights are missing, unreadable, or not those of the model size asked for."""


def _torchvision_names(model: str) -> tuple[str, str]:
    """(builder name, weights enum name) of ``model`` ("small" or "large")."""
    return MODELS[model]


def cache_file(model: str) -> Path:
    """The file torchvision downloads the default weights of ``model`` to, in the torch hub cache
    (``torch.hub.get_dir()/checkpoints/``; TORCH_HOME moves it). It may not exist."""
    from torchvision.models import optical_flow

    url = getattr(optical_flow, _torchvision_names(model)[1]).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_command(model: str) -> str:
    """A shell command that puts the default weights of ``model`` into the torch cache (needs internet)."""
    builder, enum = _torchvision_names(model)
    return (f'python -c "from torchvision.models.optical_flow import {builder}, {enum}; '
            f'{builder}(weights={enum}.DEFAULT)"')


def weights_file(model: str, weights: str = "") -> Path:
    """The weights file that ``raft_flow(model=model, weights=weights)`` reads, checked to exist.

    ``weights`` is a file path, or "" for the torch cache (see cache_file). RaftWeightsError when the
    file is absent, saying how to get it.
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise RaftWeightsError(f"RAFT weights file {path} {what}; pass --param weights=FILE with a "
                                   f"raft_{model} state dict, or weights= (empty) for the torch cache")
        return path.resolve()
    path = cache_file(model)
    if not path.is_file():
        raise RaftWeightsError(
            f"no raft_{model} weights in the torch cache: expected {path} (torch.hub.get_dir() is "
            f"{torch.hub.get_dir()}; TORCH_HOME moves it). flowprep never downloads. On a machine with "
            f"internet, run\n    {fetch_command(model)}\nand copy the file to that path, or pass "
            f"--param weights=FILE")
    return path.resolve()


def _file_key(path: Path) -> tuple:
    """A key that changes when the file is replaced or rewritten."""
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size)


def weights_identity(model: str, weights: str = "") -> dict[str, str]:
    """Which weights ``raft_flow(model=model, weights=weights)`` uses, for recording with the flow.

    Returns {"file": absolute path, "sha256": first 16 hex digits of the file's SHA-256}. Compare the
    sha256 to refuse flow made with other weights; the file path is for people (it differs between
    machines). RaftWeightsError when the file is absent.
    """
    path = weights_file(model, weights)
    key = _file_key(path)
    with _LOCK:
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            _DIGESTS[key] = digest.hexdigest()
    return {"file": str(path), "sha256": _DIGESTS[key][:16]}


def _read_state_dict(path: Path, model: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (plain, or under a checkpoint's "model" / "state_dict"), on CPU."""
    fix = (f"delete it and fetch it again with\n    {fetch_command(model)}" if path == cache_file(model).resolve()
           else f"pass --param weights=FILE with a raft_{model} state dict saved by torch.save")
    not_weights = f"{path} is not a RAFT weights file ({{why}}); {fix}"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise RaftWeightsError(f"cannot read RAFT weights file {path}: {exc.strerror or exc}") from None
    except pickle.UnpicklingError:  # not a pickle, or one holding objects that weights_only=True refuses
        raise RaftWeightsError(not_weights.format(why="torch.load(weights_only=True) refuses it: not written "
                                                      "by torch.save, or it holds objects other than tensors")) \
            from None
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make torch.load raise nearly any type
        # (IndexError for an empty file, KeyError for text, RuntimeError for a truncated zip archive)
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        raise RaftWeightsError(not_weights.format(why=f"torch.load fails: {type(exc).__name__} {first}".strip())) \
            from None
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        why = (f"it holds a {type(obj).__name__}, not a state dict (names -> tensors), plain or under "
               f"{' or '.join(repr(k) for k in CHECKPOINT_KEYS)}")
        raise RaftWeightsError(not_weights.format(why=why))
    return obj


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """What differs between a state dict and a model's ("" when names and shapes agree)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} of other shapes (e.g. {k}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(expected[k].shape)} in the model)")
    return ", ".join(parts)


def _build(model: str) -> torch.nn.Module:
    """A randomly initialised torchvision RAFT of size ``model`` (weights=None: nothing is downloaded)."""
    from torchvision.models import optical_flow

    return getattr(optical_flow, _torchvision_names(model)[0])(weights=None, progress=False)


def _load_model(model: str, path: Path, device: torch.device) -> torch.nn.Module:
    """torchvision's RAFT of size ``model`` with the weights of ``path``, in eval mode on ``device``."""
    state = _read_state_dict(path, model)
    net = _build(model)
    problem = _mismatch(state, net.state_dict())
    if problem:
        other = "small" if model == "large" else "large"
        if not _mismatch(state, _build(other).state_dict()):
            fix = (f"it holds raft_{other} weights: pass --param model={other}, or --param weights=FILE with "
                   f"raft_{model} ones")
        else:
            fix = f"pass --param weights=FILE with the state dict of torchvision's raft_{model}"
        raise RaftWeightsError(f"{path} is not a raft_{model} state dict: {problem}; {fix}")
    net.load_state_dict(state)
    return net.eval().to(device)


def _model(model: str, weights: str, device: torch.device) -> torch.nn.Module:
    """The cached model for (model, weights file, device); built once per process and file version."""
    path = weights_file(model, weights)
    key = (model, *_file_key(path), str(device))
    with _LOCK:
        if key not in _MODELS_BUILT:
            _MODELS_BUILT[key] = _load_model(model, path, device)
        return _MODELS_BUILT[key]


def pad_amounts(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding that makes a frame's sides multiples of 8 and at
    least MIN_SIZE; centred, the extra pixel at the right / bottom, like the RAFT reference's InputPadder
    ("sintel" mode, github.com/princeton-vl/RAFT core/utils/utils.py)."""
    def split(side: int) -> tuple[int, int]:
        total = max(-(-side // 8) * 8, MIN_SIZE) - side
        return total // 2, total - total // 2

    (left, right), (top, bottom) = split(width), split(height)
    return left, right, top, bottom


def raft_flow(prev: Any, nxt: Any, *, model: str = "large", iterations: int = 12, weights: str = "",
              device: str | torch.device = "cpu") -> torch.Tensor:
    """RAFT flow of a batch of gray frame pairs, all pairs in one forward pass.

    prev, nxt: (B, H, W) or (H, W) gray frames, numpy or torch; uint8 as 0..255, float as 0..1 (as
    torchvision's convert_image_dtype reads them). Each frame is replicated to 3 channels and mapped to
    [-1, 1], as the transforms of torchvision's Raft weights do, padded by replication (pad_amounts) and
    the flow cropped back. model: "small" or "large"; iterations: RAFT's recurrent updates (torchvision's
    num_flow_updates), the last prediction is returned; weights: a file, or "" for the torch cache.
    Parameters are assumed resolved by flowprep.flow.params.

    Returns (B, H, W, 2) float32 on ``device``, x then y, in pixels, flow from prev to nxt
    (prev[y, x] ~ nxt[y + v, x + u]). Raises RaftWeightsError for missing or mismatched weights and
    TorchFlowError for bad frames or devices.
    """
    from flowprep.flow.torchflow import _pair

    p, n, integer = _pair(prev, nxt, device)  # (B, H, W) float32 on the device
    net = _model(model, weights, p.device)
    if integer:
        p, n = p / 255.0, n / 255.0
    height, width = p.shape[-2:]
    left, right, top, bottom = pad_amounts(height, width)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = (x[:, None] - 0.5) / 0.5  # (B, 1, H, W) in [-1, 1], as torchvision's normalize(mean=0.5, std=0.5)
        x = torch.nn.functional.pad(x, (left, right, top, bottom), mode="replicate")
        return x.expand(-1, 3, -1, -1).contiguous()  # (B, 3, H', W'): gray replicated to RGB

    # no_grad rather than inference_mode: the caller may modify the result in place (flips, quantising)
    with torch.no_grad():
        flow = net(prepare(p), prepare(n), num_flow_updates=iterations)[-1]  # (B, 2, H', W')
    flow = flow[:, :, top:top + height, left:left + width]
    return flow.permute(0, 2, 3, 1).contiguous().float()  # (B, H, W, 2), x then y
