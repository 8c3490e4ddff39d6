"""Linear mapping of flow to uint8, as in the two-stream literature.

u8 = floor(255 * (clip(v, -b, b) + b) / (2b) + 0.5): round half up, so zero flow maps to 128.
The inverse is v = u8 * 2b / 255 - b. Both the bound and the rounding rule are recorded in every store.

Imported flow may have been truncated instead (mmaction2's flow_extraction.py: ``astype(np.uint8)``), so
u8 = floor(255 * (clip(v, -b, b) + b) / (2b)): zero flow maps to 127, and the value u8 stands for the
middle of its step, v = (u8 + 0.5) * 2b / 255 - b. ``ROUNDINGS`` names both rules; a store records its
one rule's formula under "rounding", and `rounding_of` reads the name back.
"""
from __future__ import annotations

import numpy as np

from flowprep.errors import OptionError

DEFAULT_BOUND = 20.0
ROUNDING_RULE = "floor(255*(clip(v,-b,b)+b)/(2b)+0.5)"
TRUNCATION_RULE = "floor(255*(clip(v,-b,b)+b)/(2b))"
ROUNDINGS = {"round": ROUNDING_RULE, "truncate": TRUNCATION_RULE}  # rule name -> the formula a store records
DEQUANTIZE = {"round": "v = u8 * 2b / 255 - b", "truncate": "v = (u8 + 0.5) * 2b / 255 - b"}
ZERO_FLOW = {"round": 128.0, "truncate": 127.0}  # the u8 value zero flow is stored as: where to centre it
_OFFSET = {"round": 0.0, "truncate": 0.5}  # added to u8 before scaling back


def rounding_of(config: dict) -> str:
    """The rule name ("round" or "truncate") of a store's config. Stores written before truncation could be
    recorded carry another text (an imported store's note on its tool): every one of them was read as
    rounded, and extract always rounded, so anything but the truncation formula is "round"."""
    return "truncate" if config.get("rounding") == TRUNCATION_RULE else "round"


def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not np.isfinite(bound) or bound <= 0:
        raise OptionError(f"flow bound must be a positive, finite number of pixels, got {bound}")
    return bound


def quantize(flow, bound: float = DEFAULT_BOUND):
    """float flow (any shape, pixels) -> uint8 of the same shape; NaN maps to 128 (zero motion).

    ``flow`` is a numpy array (result: numpy) or a torch tensor (result: a uint8 tensor on its device, so
    the device path quantises where the flow was computed); the arithmetic is the same float64 for both.
    """
    bound = _check_bound(bound)
    # In float32 the product rounds to 24 bits and about one value in 1e5 lands one step off the formula.
    # float64 holds v * 255 exactly for float32 flow, and 255 (v + b) / (2b) + 0.5 = 255 v / (2b) + 128 keeps
    # tiny negative values below 128 (adding b first would round them up). Costs ~0.6 ms per 340x256 field.
    if type(flow).__module__.startswith("torch"):
        import torch

        v = torch.nan_to_num(flow.double(), nan=0.0).clamp(-bound, bound)
        return (torch.floor(v * 255.0 / (2.0 * bound)) + 128.0).clamp(0, 255).to(torch.uint8)
    v = np.nan_to_num(np.asarray(flow, dtype=np.float64), nan=0.0)
    v = np.clip(v, -bound, bound)
    q = np.floor(v * 255.0 / (2.0 * bound)) + 128.0
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND, rounding: str = "round") -> np.ndarray:
    """uint8 (any shape) -> float32 flow in pixels: the inverse of ``rounding`` ("round": [-bound, bound];
    "truncate": each step's middle, [-bound + bound/255, bound + bound/255]). FlowStore.dequantize passes
    the store's own bound and rule."""
    bound = _check_bound(bound)
    if rounding not in _OFFSET:
        raise OptionError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    q = np.asarray(q, dtype=np.float32)
    if _OFFSET[rounding]:
        q = q + np.float32(_OFFSET[rounding])
    return q * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def _per_field(mask) -> np.ndarray:
    """Count the True values of ``mask`` per field: (..., H, W, 2) -> (...) int64 numpy (0-d for one field;
    any array of fewer than 3 dimensions counts as one). numpy or torch (reduced on its device)."""
    dims = tuple(range(max(mask.ndim - 3, 0), mask.ndim))
    if type(mask).__module__.startswith("torch"):
        return (mask.sum(dim=dims) if dims else mask.long()).cpu().numpy().astype(np.int64)
    return np.asarray(np.count_nonzero(mask, axis=dims) if dims else mask.astype(np.int64), dtype=np.int64)


def at_bound_count(q: np.ndarray) -> np.ndarray:
    """Quantised values at either end of the range (0 or 255) per field: clipped flow, as far as stored u8
    flow can tell (import has no float flow). q (..., H, W, 2) uint8 -> (...) int64."""
    q = np.asarray(q)
    return _per_field((q == 0) | (q == 255))


def clipped_count(flow, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow values (both components) whose magnitude reaches the bound, per field: float flow (..., H, W, 2),
    numpy or torch -> (...) int64 numpy. The one computation of clipping (the record's clipped_fraction)."""
    bound = _check_bound(bound)
    return _per_field(abs(flow) >= bound)


def nonfinite_count(flow) -> np.ndarray:
    """NaN or infinite flow values per field: float flow (..., H, W, 2), numpy or torch -> (...) int64 numpy.
    quantize() maps them to a value like any other (NaN to 128: no motion), so every path that stores flow
    counts them and refuses a field that holds any (flowprep.work.VideoEncoder)."""
    if type(flow).__module__.startswith("torch"):
        import torch

        return _per_field(~torch.isfinite(flow))
    return _per_field(~np.isfinite(np.asarray(flow)))


def clipped_fraction(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> float:
    """Share of flow values (both components) whose magnitude reaches the bound."""
    flow = np.asarray(flow)
    return float(clipped_count(flow, bound).sum()) / max(flow.size, 1)
