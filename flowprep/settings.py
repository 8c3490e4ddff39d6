"""What an extraction is asked to do: `RunSettings` (recorded in the store) and `ExtractConfig` (the options
of `flowprep extract`, from which the settings are derived; the rest only steer the run)."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowprep import __version__
from flowprep.video.decode import INTERPOLATION, Resize
from flowprep.errors import OptionError
from flowprep.flow.compute import default_backend, resolve_device
from flowprep.flow.params import BACKENDS, algorithm, resolve_params
from flowprep.flow.quantize import DEFAULT_BOUND, ROUNDING_RULE
from flowprep.store.format import CODECS, DEFAULT_CODEC, DEFAULT_JPEG_QUALITY, FLOW_LAYOUT, INDEX_CONVENTION

OPENCV_NAMES = {"tvl1": "DualTVL1", "farneback": "calcOpticalFlowFarneback", "dis": "DISOpticalFlow"}


def check_store_options(codec: str, jpeg_quality: int, bound: float, jobs: int) -> None:
    """The options every store-building command shares; OptionError names the option and what it allows."""
    if codec not in CODECS:
        raise OptionError(f"unknown --codec {codec!r}; choose one of {', '.join(CODECS)}")
    if not 1 <= jpeg_quality <= 100:
        raise OptionError(f"--jpeg-quality must be 1..100, got {jpeg_quality}")
    if not math.isfinite(bound) or bound <= 0:
        raise OptionError(f"--bound must be a positive, finite number of pixels, got {bound}")
    if jobs < 1:
        raise OptionError(f"--jobs must be at least 1, got {jobs}")


def tool_versions() -> dict[str, str]:
    """The versions of the code that shaped a store's data, as recorded in its config."""
    import cv2
    import h5py
    import numpy as np

    return {"flowprep": __version__, "opencv": cv2.__version__, "numpy": np.__version__, "h5py": h5py.__version__,
            "python": sys.version.split()[0]}


@dataclass(frozen=True)
class RunSettings:
    """Every setting that shapes the stored data; `recorded()` is what the store and its parts hold.

    params: resolved (every parameter, checked for ``backend``); device: "cpu" or "cuda".
    """

    algo: str
    params: dict[str, Any]
    backend: str
    device: str
    bound: float = DEFAULT_BOUND
    codec: str = DEFAULT_CODEC
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    resize: Resize = Resize()
    shard: tuple[int, int] = (1, 1)

    @property
    def implementation(self) -> str:
        """Which code computed the flow: it is part of what must agree on resume and merge (for RAFT with
        the weights' SHA-256, so flow from other weights is never mixed in)."""
        if self.backend == "opencv":
            return f"opencv-{OPENCV_NAMES[self.algo]}-cpu"
        if self.algo == "raft":
            from flowprep.flow.torchflow.raft import weights_identity

            sha = weights_identity(self.params["model"], self.params["weights"])["sha256"]
            return f"torchvision-raft_{self.params['model']}-{sha}-{self.device}"
        return f"flowprep-torch-{self.algo}-{self.device}"

    def recorded(self) -> dict[str, Any]:
        """The config written into the store: every setting that shaped the data, and tool versions."""
        extra = {}
        if self.algo == "raft":  # which weights: the file differs between machines, its SHA-256 does not
            from flowprep.flow.torchflow.raft import weights_identity

            extra["raft_weights"] = weights_identity(self.params["model"], self.params["weights"])
        return {
            "algo": self.algo,
            "params": self.params,
            "implementation": self.implementation,
            "flow_input": "gray uint8 (cv2.COLOR_RGB2GRAY) of the resized frames",
            "bound": float(self.bound),
            "rounding": ROUNDING_RULE,
            "dequantize": "v = u8 * 2b / 255 - b",
            "codec": self.codec,
            "jpeg_quality": int(self.jpeg_quality) if self.codec != "raw" else None,
            "size": self.resize.describe(),
            "interpolation": INTERPOLATION,
            "index_convention": INDEX_CONVENTION,
            "flow_layout": FLOW_LAYOUT,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "versions": tool_versions(),
            **extra,
        }


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `flowprep extract` needs. `settings()` derives the recorded part; the rest steers the run."""

    videos: Path
    out: Path
    algo: str = "tvl1"
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    backend: str | None = None  # the algorithm's CPU default (opencv), or torch (batched; the one on CUDA)
    batch_size: int = 32  # frame pairs per flow call with the torch backend
    gpus: tuple[int, ...] | None = None  # CUDA devices to use; default: all visible
    bound: float = DEFAULT_BOUND
    codec: str = DEFAULT_CODEC
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    resize: Resize = Resize()
    jobs: int = 1
    shard: tuple[int, int] = (1, 1)  # (I, N), 1-based
    dataset: str = "auto"
    splits_dir: Path | None = None
    overwrite: bool = False
    allow_missing: bool = False  # split files may name videos that are not on disk
    follow_symlinks: bool = False  # class folders and videos that are links leaving --videos
    group_regex: str | None = None  # videos sharing footage (data_manifest.grouping); None: _gNN_ or none
    progress: bool = True
    scheduler: str | None = None  # a Dask scheduler's address or local:N (flowprep.executors.cluster); None: this machine

    def __post_init__(self):
        for name in ("videos", "out", "splits_dir"):  # accept str paths from Python callers
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    def validate(self) -> None:
        """Check every option before any file is touched; OptionError names the option and what it allows."""
        check_store_options(self.codec, self.jpeg_quality, self.bound, self.jobs)
        i, n = self.shard
        if not (n >= 1 and 1 <= i <= n):
            raise OptionError(f"--shard must be I/N with 1 <= I <= N, got {i}/{n}")
        if self.batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.scheduler is not None:
            from flowprep.executors.cluster import check_options

            check_options(self)
        settings = self.settings()  # the algorithm, its parameters for the backend, the device
        if settings.device == "cuda" and self.scheduler is None:
            self.devices()
        if settings.algo == "raft":  # weights that are not there are named before any file is touched
            from flowprep.flow.torchflow.raft import weights_file

            weights_file(settings.params["model"], settings.params["weights"])

    def settings(self) -> RunSettings:
        """The recorded settings: parameters resolved for the backend, 'auto' device resolved."""
        algorithm(self.algo)  # an unknown algorithm is named before anything else
        # on a cluster, the workers have the GPUs (flowprep.executors.cluster checks them), not necessarily this machine
        device = "cuda" if self.scheduler is not None and self.device == "cuda" else resolve_device(self.device)
        backend = self.backend or default_backend(self.algo, device)
        if backend not in BACKENDS:
            raise OptionError(f"unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "opencv" and device != "cpu":
            raise OptionError("--backend opencv runs on CPU only; use --backend torch with --device cuda")
        return RunSettings(self.algo, resolve_params(self.algo, self.params, backend=backend), backend, device,
                           float(self.bound), self.codec, int(self.jpeg_quality), self.resize, self.shard)

    def devices(self) -> list[str]:
        """Torch devices the batched backend runs on: each GPU asked for (or all visible), or ['cpu']."""
        if resolve_device(self.device) == "cpu":
            return ["cpu"]
        import torch

        count = torch.cuda.device_count()
        ids = list(self.gpus) if self.gpus else list(range(count))
        bad = [i for i in ids if not 0 <= i < count]
        if bad:
            raise OptionError(f"--gpus {','.join(map(str, ids))}: no such CUDA device {bad}; "
                              f"{count} visible (0..{count - 1})")
        return [f"cuda:{i}" for i in ids]

    @property
    def store_path(self) -> Path:
        """The file this run writes: --out, or a per-shard name beside it."""
        i, n = self.shard
        if n == 1:
            return self.out
        return self.out.with_name(f"{self.out.stem}-{i}of{n}{self.out.suffix or '.h5'}")
