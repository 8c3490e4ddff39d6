"""What an extraction is asked to do: `RunSettings` (recorded in the store) and `ExtractConfig` (the options
of `flowprep extract`, from which the settings are derived; the rest only steer the run)."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowprep import __version__
from flowprep.video.decode import INTERPOLATION, Resize
from flowprep.errors import FlowprepError, OptionError
from flowprep.flow.compute import choose_backend, resolve_device
from flowprep.flow.params import algorithm, check_frame, resolve_params
from flowprep.flow.quantize import DEFAULT_BOUND, DEQUANTIZE, ROUNDINGS
from flowprep.store.codec import CODECS, DEFAULT_CODEC, DEFAULT_JPEG_QUALITY, check_jpeg_quality, codec
from flowprep.store.format import FLOW_LAYOUT, INDEX_CONVENTION

OPENCV_NAMES = {"tvl1": "DualTVL1", "farneback": "calcOpticalFlowFarneback", "dis": "DISOpticalFlow"}


def check_store_options(codec_name: str, jpeg_quality: int, bound: float, jobs: int) -> None:
    """The options every store-building command shares; OptionError names the option and what it allows."""
    codec(codec_name)
    check_jpeg_quality(jpeg_quality)
    if not math.isfinite(bound) or bound <= 0:
        raise OptionError(f"--bound must be a positive, finite number of pixels, got {bound}")
    if jobs < 1:
        raise OptionError(f"--jobs must be at least 1, got {jobs}")


DEFAULT_BATCH_SIZE = 32  # frame pairs per flow call with the torch backend


def default_jobs() -> int:
    """--jobs when not given: the number of CPU cores."""
    return os.cpu_count() or 1


def check_shard(shard: tuple[int, int]) -> None:
    """(I, N) with 1 <= I <= N, the one check of --shard; OptionError otherwise."""
    i, n = shard
    if not (n >= 1 and 1 <= i <= n):
        raise OptionError(f"--shard must be I/N with 1 <= I <= N, got {i}/{n}")


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8), checked (check_shard); OptionError naming the form otherwise."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise OptionError(f"--shard expects I/N such as 2/8, got {text!r}") from None
    check_shard((i, n))
    return i, n


# The tools whose versions shape the flow itself: compared on every Dask worker (flowprep.executors.cluster);
# h5py and Python only write and run, so they are recorded but not compared.
COMPUTE_TOOLS = ("flowprep", "opencv", "numpy", "torch", "triton")


def tool_versions(backend: str | None = None) -> dict[str, str]:
    """The versions of the code that shaped a store's data, as its config records them: flowprep, OpenCV,
    NumPy, h5py, Python and, for ``backend`` "torch", torch and Triton ("not installed" when absent). The
    one list of them."""
    import cv2
    import h5py
    import numpy as np

    versions = {"flowprep": __version__, "opencv": cv2.__version__, "numpy": np.__version__,
                "h5py": h5py.__version__, "python": sys.version.split()[0]}
    if backend == "torch":
        from importlib.metadata import PackageNotFoundError, version

        for name in ("torch", "triton"):
            try:
                versions[name] = version(name)
            except PackageNotFoundError:
                versions[name] = "not installed"
    return versions


def compute_versions(backend: str | None = None) -> dict[str, str]:
    """The part of tool_versions that shapes the flow (COMPUTE_TOOLS): what every worker must match."""
    return {k: v for k, v in tool_versions(backend).items() if k in COMPUTE_TOOLS}


def recorded_config(*, algo: str, params: dict[str, Any], implementation: str, flow_input: str, bound: float,
                    codec: str, jpeg_quality: int | None, size: str, interpolation: str, shard: str = "1/1",
                    rounding: str = "round", backend: str | None = None, **extra: Any) -> dict[str, Any]:
    """The config a store and its parts record: the one builder of it, for every way of making a store
    (extract's RunSettings, import's ImportSettings). The keys incompatibilities() compares are all here;
    ``extra`` adds what one kind of store says besides (RAFT weights, where imported data came from).
    ``rounding``: the rule's name (flowprep.flow.quantize.ROUNDINGS); the store records its formula."""
    return {"algo": algo, "params": params, "implementation": implementation, "flow_input": flow_input,
            "bound": float(bound), "rounding": ROUNDINGS[rounding], "dequantize": DEQUANTIZE[rounding],
            "codec": codec, "jpeg_quality": jpeg_quality, "size": size, "interpolation": interpolation,
            "index_convention": INDEX_CONVENTION, "flow_layout": FLOW_LAYOUT, "shard": shard,
            "versions": tool_versions(backend), **extra}


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
        return recorded_config(algo=self.algo, params=self.params, implementation=self.implementation,
                               flow_input="gray uint8 (cv2.COLOR_RGB2GRAY) of the resized frames",
                               bound=self.bound, codec=self.codec,
                               jpeg_quality=int(self.jpeg_quality) if CODECS[self.codec].jpeg else None,
                               size=self.resize.describe(), interpolation=INTERPOLATION,
                               shard=f"{self.shard[0]}/{self.shard[1]}", backend=self.backend, **extra)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `flowprep extract` needs. `settings()` derives the recorded part; the rest steers the run."""

    videos: Path
    out: Path
    algo: str = "tvl1"
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    backend: str | None = None  # the algorithm's CPU default (opencv), or torch (batched; the one on CUDA)
    batch_size: int = DEFAULT_BATCH_SIZE
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
    scheduler: str | None = None  # a Dask scheduler's address or local:N (executors.cluster); None: this machine

    def __post_init__(self):
        for name in ("videos", "out", "splits_dir"):  # accept str paths from Python callers
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    def validate(self) -> None:
        """Check every option before any file is touched; OptionError names the option and what it allows."""
        check_store_options(self.codec, self.jpeg_quality, self.bound, self.jobs)
        check_shard(self.shard)
        if self.batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.scheduler is not None:
            from flowprep.executors.scheduler import check_options

            check_options(self)
        settings = self.settings()  # the algorithm, its parameters for the backend, the device
        check_frame(settings.algo, settings.params, self.resize.smaller_side)
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
        backend = choose_backend(self.algo, device, self.backend)
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


def settings_from_recorded(config: dict[str, Any], device: str = "cpu") -> RunSettings:
    """The RunSettings that reproduce a store's recorded config (``FlowStore.attrs``, or a copy kept with a
    model): the inverse of `RunSettings.recorded`, so new videos get exactly the training data's frames and
    flow. ``device``: "cpu" or "cuda", where the torch backend would run.

    FlowprepError names what cannot be reproduced: imported flow (another tool computed it), a config
    missing a setting, or one this flowprep does differently (interpolation, rounding, flow input).
    """
    from flowprep.video.decode import parse_size

    if not isinstance(config, dict):
        raise FlowprepError(f"the recorded flow settings are a {type(config).__name__}, not a dict")
    if config.get("algo") == "imported" or "imported" in config:
        tool = (config.get("imported") or {}).get("tool", "another tool")
        raise FlowprepError(f"the flow was imported from {tool}'s files, not computed by flowprep, so its exact "
                            "computation is unknown here; extract the training videos with `flowprep extract` and "
                            "train on that store to classify new videos")
    missing = [k for k in ("algo", "params", "implementation", "bound", "codec", "size") if k not in config]
    if missing:
        raise FlowprepError(f"the recorded flow settings lack {', '.join(missing)}")
    differ = [(k, config.get(k), now) for k, now in (("interpolation", INTERPOLATION), ("rounding", ROUNDINGS["round"]))
              if config.get(k, now) != now]
    if differ:
        raise FlowprepError("the flow was made differently from how this flowprep makes it: "
                            + "; ".join(f"{k} {was!r}, here {now!r}" for k, was, now in differ))
    implementation = str(config["implementation"])
    backend = "opencv" if implementation.startswith("opencv-") else "torch"
    size = str(config["size"])
    try:
        resize = Resize(None, None, int(size.split("=", 1)[1])) if size.startswith("short_side=") else parse_size(size)
    except (ValueError, OptionError) as exc:
        raise FlowprepError(f"the recorded frame size {size!r} cannot be read ({exc})") from None
    if config["algo"] == "raft":  # the same weights, known by their SHA-256 (the file's path differs by machine)
        from flowprep.flow.torchflow.raft import weights_identity

        params, recorded = config["params"], (config.get("raft_weights") or {}).get("sha256")
        try:
            found = weights_identity(params.get("model", "large"), params.get("weights", ""))["sha256"]
        except FlowprepError as exc:
            raise FlowprepError(f"the flow was made by RAFT with weights of SHA-256 {recorded}: {exc}") from None
        if found != recorded:
            raise FlowprepError(f"the flow was made by RAFT with weights of SHA-256 {recorded}, but the weights "
                                f"found here have {found}; put the training weights there (or in the torch cache)")
    quality = config.get("jpeg_quality")
    try:
        return RunSettings(str(config["algo"]), resolve_params(str(config["algo"]), config["params"], backend=backend),
                           backend, device, float(config["bound"]), str(config["codec"]),
                           int(quality) if quality is not None else DEFAULT_JPEG_QUALITY, resize)
    except OptionError as exc:
        raise FlowprepError(f"the recorded flow settings cannot be used: {exc}") from None
