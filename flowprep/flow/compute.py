"""Dense optical flow between two frames: OpenCV on CPU (TV-L1, Farneback, DIS), PyTorch on CPU or CUDA.

Parameters are resolved and checked by flowprep.flow.params, the one table of algorithms and their values.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from flowprep.errors import FlowprepError, OptionError
from flowprep.flow.params import ALGORITHMS, BACKENDS, algorithm, check_frame, resolve_params

DEVICES = ("cpu", "cuda", "auto")
_DIS_PRESET_IDS = {"ultrafast": 0, "fast": 1, "medium": 2}  # cv2.DISOPTICAL_FLOW_PRESET_*


def _cv2_object(algo: str, params: dict[str, Any]):
    """The OpenCV flow object of ``algo`` with every parameter of ``params`` (resolved) set; None for
    Farneback, which OpenCV runs as a plain function."""
    import cv2

    if algo == "farneback":
        return None
    if algo == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise FlowprepError("cv2.optflow is missing: install opencv-contrib-python-headless "
                                "(and uninstall opencv-python / opencv-python-headless, which shadow it)")
        obj = cv2.optflow.DualTVL1OpticalFlow_create()
        obj.setUseInitialFlow(False)
    else:
        obj = cv2.DISOpticalFlow_create(_DIS_PRESET_IDS[params["preset"]])
    for key, param in algorithm(algo).params.items():
        if param.setter:
            getattr(obj, param.setter)(params[key])
    return obj


class OpenCVFlow:
    """Reusable CPU flow computer: keeps the OpenCV object alive between frame pairs."""

    def __init__(self, algo: str = "tvl1", **params: Any):
        self.algo = algo
        self.params = resolve_params(algo, params, backend="opencv")
        self._obj = _cv2_object(algo, self.params)

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """(H, W) uint8 gray pair -> (H, W, 2) float32 flow in pixels, x then y."""
        import cv2

        if self._obj is not None:
            flow = self._obj.calc(prev, nxt, None)
        else:
            p = self.params
            flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, p["pyr_scale"], p["levels"], p["winsize"],
                                                p["iterations"], p["poly_n"], p["poly_sigma"], p["flags"])
        return np.asarray(flow, dtype=np.float32)


def as_gray_u8(frame: np.ndarray, name: str = "frame") -> np.ndarray:
    """(H, W) gray or (H, W, 3) RGB frame -> contiguous (H, W) uint8 gray, as flow is computed from."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        import cv2

        frame = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    if frame.ndim != 2:
        raise FlowprepError(f"{name}: expected an (H, W) gray or (H, W, 3) RGB frame, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame)


def default_backend(algo: str, device: str) -> str:
    """The backend that runs ``algo`` on the resolved ``device`` when none is asked for."""
    backends = algorithm(algo).backends
    if device == "cpu":
        return backends[0]
    if "torch" not in backends:
        raise OptionError(f"{algo} runs on CPU only (backend {backends[0]}); use --device cpu")
    return "torch"


def choose_backend(algo: str, device: str, backend: str | None = None) -> str:
    """The backend that computes ``algo`` on the resolved ``device`` ("cpu" or "cuda"): ``backend`` checked,
    or the algorithm's default. The one check of backend and device, for the API and the command alike;
    OptionError otherwise."""
    if backend is None:
        return default_backend(algo, device)
    if backend not in BACKENDS:
        raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "opencv" and device != "cpu":
        raise OptionError("the opencv backend runs on CPU only; use the torch backend (--backend torch) on cuda")
    return backend


def compute_flow(prev: np.ndarray, nxt: np.ndarray, algo: str = "tvl1", device: str = "cpu",
                 backend: str | None = None, **params: Any) -> np.ndarray:
    """Dense flow from ``prev`` to ``nxt``.

    prev, nxt: (H, W) uint8 gray or (H, W, 3) uint8 RGB frames of one size.
    Returns (H, W, 2) float32, x then y, in pixels: ``prev[y, x] ~ nxt[y + v, x + u]``.
    ``backend`` is "opencv" (the CPU default) or "torch" (the only one on CUDA).
    """
    if device not in DEVICES:
        raise OptionError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    prev_g, nxt_g = as_gray_u8(prev, "prev"), as_gray_u8(nxt, "nxt")
    if prev_g.shape != nxt_g.shape:
        raise FlowprepError(f"frames differ in size: {prev_g.shape} vs {nxt_g.shape}")
    device = resolve_device(device)
    backend = choose_backend(algo, device, backend)
    if backend == "opencv":
        flow_fn = OpenCVFlow(algo, **params)
        check_frame(algo, flow_fn.params, min(prev_g.shape))
        return flow_fn(prev_g, nxt_g)
    check_frame(algo, resolve_params(algo, params, backend=backend), min(prev_g.shape))
    return compute_flow_batch(prev_g[None], nxt_g[None], algo=algo, device=device, **params)[0]


def compute_flow_batch(prev: np.ndarray, nxt: np.ndarray, algo: str = "tvl1", device: str = "cpu",
                       **params: Any) -> np.ndarray:
    """Batched PyTorch flow: (B, H, W) uint8 pairs -> (B, H, W, 2) float32 numpy."""
    try:
        from flowprep.flow import torchflow
    except ImportError as exc:
        raise FlowprepError(f"the PyTorch flow backend is not available ({exc})") from exc
    out = torchflow.compute_flow_batch(prev, nxt, algo=algo, device=resolve_device(device), **params)
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


__all__ = ["ALGORITHMS", "BACKENDS", "DEVICES", "OpenCVFlow", "compute_flow", "compute_flow_batch",
           "resolve_device", "default_backend", "choose_backend", "as_gray_u8"]
