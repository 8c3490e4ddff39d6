"""Dense optical flow between two frames: TV-L1 and Farneback, OpenCV on CPU (PyTorch on CPU or CUDA).

Parameter names are ours (snake case) and map one to one onto OpenCV's setters; the full resolved set is
recorded in every store, so a store says exactly what produced it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from flowprep.errors import FlowprepError, OptionError

ALGORITHMS = ("tvl1", "farneback")
DEVICES = ("cpu", "cuda", "auto")
BACKENDS = ("opencv", "torch")

# OpenCV's own defaults for cv2.optflow.DualTVL1OpticalFlow_create (CPU implementation).
TVL1_DEFAULTS: dict[str, Any] = {
    "tau": 0.25,
    "lambda_": 0.15,
    "theta": 0.3,
    "nscales": 5,
    "warps": 5,
    "epsilon": 0.01,
    "inner_iterations": 30,
    "outer_iterations": 10,
    "scale_step": 0.8,
    "gamma": 0.0,
    "median_filtering": 5,
}

# cv2.calcOpticalFlowFarneback has no defaults; these are the ones most peers use.
FARNEBACK_DEFAULTS: dict[str, Any] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}

DEFAULTS = {"tvl1": TVL1_DEFAULTS, "farneback": FARNEBACK_DEFAULTS}

_TVL1_SETTERS = {
    "tau": "setTau",
    "lambda_": "setLambda",
    "theta": "setTheta",
    "nscales": "setScalesNumber",
    "warps": "setWarpingsNumber",
    "epsilon": "setEpsilon",
    "inner_iterations": "setInnerIterations",
    "outer_iterations": "setOuterIterations",
    "scale_step": "setScaleStep",
    "gamma": "setGamma",
    "median_filtering": "setMedianFiltering",
}


# What OpenCV accepts, checked before any video is touched: out-of-range values make OpenCV return NaN or
# zero flow (Farneback winsize=0, iterations=0; TV-L1 theta=0, warps=0), raise deep inside a worker
# (pyr_scale=1, scale_step=0, median_filtering=4) or crash the process outright (Farneback winsize<0 frees
# memory twice). Values found by running OpenCV 4.14 on each; the message says what is allowed.
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_POSITIVE = (lambda v: v > 0, "positive")
_OPEN_UNIT = (lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
PARAM_RULES: dict[str, dict[str, tuple]] = {
    "tvl1": {
        "tau": _POSITIVE, "lambda_": _POSITIVE, "theta": _POSITIVE, "epsilon": _POSITIVE,
        "nscales": _AT_LEAST_1, "warps": _AT_LEAST_1, "inner_iterations": _AT_LEAST_1,
        "outer_iterations": _AT_LEAST_1, "scale_step": _OPEN_UNIT,
        "gamma": (lambda v: v >= 0, "0 or more"),
        # the median filter runs on float flow, for which OpenCV's medianBlur has only 3x3 and 5x5
        "median_filtering": (lambda v: v in (0, 1, 3, 5), "0 or 1 (no filter), 3 or 5"),
    },
    "farneback": {
        "pyr_scale": _OPEN_UNIT, "levels": (lambda v: v >= 0, "0 or more"), "winsize": _AT_LEAST_1,
        "iterations": _AT_LEAST_1, "poly_n": _AT_LEAST_1,
        # OpenCV replaces a poly_sigma <= 0 by 0.3 * poly_n; ask for that value explicitly instead
        "poly_sigma": _POSITIVE,
        # OPTFLOW_USE_INITIAL_FLOW (4) needs a flow to start from, which extraction never has
        "flags": (lambda v: v in (0, 256), "0 or 256 (cv2.OPTFLOW_FARNEBACK_GAUSSIAN)"),
    },
}


def _convert(algo: str, key: str, value: Any, kind: type) -> Any:
    """``value`` (a string from --param or a Python number) as ``kind``; OptionError when it is not one."""
    what = "an integer" if kind is int else "a number"
    bad = OptionError(f"{algo} parameter {key}={value!r} is not {what}; see `flowprep params --algo {algo}`")
    if isinstance(value, bool):
        raise bad
    if kind is int:
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        try:
            return int(str(value).strip())  # "2.7" and "3.0" are refused: no silent truncation
        except ValueError:
            raise bad from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if not np.isfinite(number):
        raise OptionError(f"{algo} parameter {key}={value!r} must be a finite number")
    return number


def resolve_params(algo: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``algo`` overlaid with ``params``; unknown names, wrong types and values OpenCV cannot
    use raise OptionError."""
    if algo not in DEFAULTS:
        raise OptionError(f"unknown flow algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    defaults = DEFAULTS[algo]
    resolved = dict(defaults)
    for key, value in (params or {}).items():
        key = "lambda_" if key == "lambda" else key
        if key not in defaults:
            raise OptionError(
                f"unknown {algo} parameter {key!r}; known parameters: {', '.join(sorted(defaults))}")
        resolved[key] = _convert(algo, key, value, type(defaults[key]))
    for key, (ok, allowed) in PARAM_RULES[algo].items():
        if not ok(resolved[key]):
            raise OptionError(f"{algo} parameter {key}={resolved[key]!r} is out of range: must be {allowed}")
    return resolved


def make_cv2_tvl1(params: dict[str, Any]):
    """An OpenCV DualTVL1 object with every parameter of ``params`` (resolved names) set."""
    import cv2

    if not hasattr(cv2, "optflow"):
        raise FlowprepError("cv2.optflow is missing: install opencv-contrib-python-headless "
                            "(and uninstall opencv-python / opencv-python-headless, which shadow it)")
    obj = cv2.optflow.DualTVL1OpticalFlow_create()
    for key, setter in _TVL1_SETTERS.items():
        getattr(obj, setter)(params[key])
    obj.setUseInitialFlow(False)
    return obj


class OpenCVFlow:
    """Reusable CPU flow computer: keeps the OpenCV object alive between frame pairs."""

    def __init__(self, algo: str = "tvl1", **params: Any):
        self.algo = algo
        self.params = resolve_params(algo, params)
        self._tvl1 = make_cv2_tvl1(self.params) if algo == "tvl1" else None

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """(H, W) uint8 gray pair -> (H, W, 2) float32 flow in pixels, x then y."""
        import cv2

        if self._tvl1 is not None:
            flow = self._tvl1.calc(prev, nxt, None)
        else:
            p = self.params
            flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, p["pyr_scale"], p["levels"], p["winsize"],
                                                p["iterations"], p["poly_n"], p["poly_sigma"], p["flags"])
        return np.asarray(flow, dtype=np.float32)


def _as_gray_u8(frame: np.ndarray, name: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        import cv2

        frame = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    if frame.ndim != 2:
        raise FlowprepError(f"{name}: expected an (H, W) gray or (H, W, 3) RGB frame, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame)


def compute_flow(prev: np.ndarray, nxt: np.ndarray, algo: str = "tvl1", device: str = "cpu",
                 backend: str | None = None, **params: Any) -> np.ndarray:
    """Dense flow from ``prev`` to ``nxt``.

    prev, nxt: (H, W) uint8 gray or (H, W, 3) uint8 RGB frames of one size.
    Returns (H, W, 2) float32, x then y, in pixels: ``prev[y, x] ~ nxt[y + v, x + u]``.
    ``backend`` is "opencv" (CPU default) or "torch" (the only one on CUDA).
    """
    if device not in DEVICES:
        raise OptionError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    prev_g, nxt_g = _as_gray_u8(prev, "prev"), _as_gray_u8(nxt, "nxt")
    if prev_g.shape != nxt_g.shape:
        raise FlowprepError(f"frames differ in size: {prev_g.shape} vs {nxt_g.shape}")
    device = resolve_device(device)
    backend = backend or ("opencv" if device == "cpu" else "torch")
    if backend not in BACKENDS:
        raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "opencv":
        if device != "cpu":
            raise OptionError("the OpenCV backend runs on CPU only; use backend='torch' for device='cuda'")
        return OpenCVFlow(algo, **params)(prev_g, nxt_g)
    return compute_flow_batch(prev_g[None], nxt_g[None], algo=algo, device=device, **params)[0]


def compute_flow_batch(prev: np.ndarray, nxt: np.ndarray, algo: str = "tvl1", device: str = "cpu",
                       **params: Any) -> np.ndarray:
    """Batched PyTorch flow: (B, H, W) uint8 pairs -> (B, H, W, 2) float32 numpy."""
    try:
        from flowprep import torchflow
    except ImportError as exc:
        raise FlowprepError(f"the PyTorch flow backend is not available ({exc})") from exc
    resolved = resolve_params(algo, params)
    out = torchflow.compute_flow_batch(prev, nxt, algo=algo, device=resolve_device(device), **resolved)
    return out.detach().float().cpu().numpy()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is visible, else 'cpu'; 'cuda' without one raises."""
    if device == "cpu":
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise OptionError("device 'cuda' was asked for but torch sees no CUDA device; "
                            "use --device cpu (or auto) on this machine")
    return "cuda"
