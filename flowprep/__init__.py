"""flowprep: videos -> RGB frames and dense optical flow, quantised, in resumable HDF5 flow stores.

Public API::

    compute_flow(prev, nxt, algo="tvl1", device="cpu", backend=None, **params) -> (H, W, 2) float32
    quantize(flow, bound=20) -> uint8, dequantize(q, bound=20) -> float32
    FlowStore(path) -> read RGB frames and flow of every video

Heavy modules (cv2, h5py, torch) are imported where they are used, so `import flowprep` stays fast.
"""
__version__ = "0.1.0"

from flowprep.errors import FlowprepError, OptionError, StoreError, VideoError  # noqa: E402
from flowprep.flow.compute import compute_flow, compute_flow_batch  # noqa: E402
from flowprep.flow.quantize import dequantize, quantize  # noqa: E402
from flowprep.store.reader import FlowStore  # noqa: E402

__all__ = ["compute_flow", "compute_flow_batch", "quantize", "dequantize", "FlowStore", "FlowprepError",
           "OptionError", "StoreError", "VideoError", "__version__"]
