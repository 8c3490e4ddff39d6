"""The trainer's configuration: one frozen dataclass, read from TOML with ``--set KEY=VALUE`` overrides.

Precedence (later wins): built-in defaults < stream presets (for keys left unset) < ``--config`` file <
``--set`` overrides < the ``--data/--split/--out`` options. Keys are flat (no TOML tables). Unknown keys are
an error that names the key. Values that depend on the stream and the backbone (learning rate, schedule,
dropout) are filled from the presets below when neither the file nor ``--set`` gives them, so the resolved
config (``config.toml`` in the run directory, and inside every checkpoint) is complete and can be re-used
as it is with ``--config``.

Derived values (``in_channels`` = 2L for a 2D temporal net, ...) are properties, never configured.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config_values import coerce as _coerce
from trainer.errors import ConfigError

STREAMS = ("spatial", "temporal")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VGGS = ("vgg16", "vgg16_bn")
INCEPTIONS = ("googlenet", "inception_v3")
CLIP_ARCHS = ("r3d_18", "mc3_18", "r2plus1d_18")
ARCHS = RESNETS + VGGS + INCEPTIONS + CLIP_ARCHS
SCHEDULES = ("iter-step", "step", "cosine")
BN_MODES = ("auto", "train", "partial", "frozen")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DECODES = ("auto", "cpu", "device")  # where training and test images are decoded and cropped
MISSING_POLICIES = ("error", "skip")
TEST_CROPS = (1, 5, 10)

# Multi-scale crop sides as fractions of the frame's short side: {256, 224, 192, 168} / 256 (paper, 340x256).
PAPER_SCALES = (1.0, 0.875, 0.75, 0.65625)
# Test crop side as a fraction of the short side: 224 / 256.
PAPER_TEST_CROP = 0.875

# Stream presets (Wang et al. 2015, "Towards Good Practices for Very Deep Two-Stream ConvNets", sec. 3):
# spatial lr 0.001, /10 every 4k iterations, stop at 10k; temporal lr 0.005, /10 every 10k, stop at 30k.
PRESET_LR = {"spatial": 0.001, "temporal": 0.005}
PRESET_LR_STEPS = {"spatial": (4000, 8000), "temporal": (10000, 20000)}
PRESET_MAX_ITERS = {"spatial": 10000, "temporal": 30000}
# Dropout before the new classifier: VGG fc6/fc7 0.9/0.9 spatial, 0.9/0.8 temporal (paper); one dropout of
# 0.8 spatial / 0.7 temporal for the other backbones (TSN, Wang et al. 2016, arXiv:1608.00859, BN-Inception).
PRESET_DROPOUT_VGG = {"spatial": (0.9, 0.9), "temporal": (0.9, 0.8)}
PRESET_DROPOUT = {"spatial": (0.8,), "temporal": (0.7,)}
# Validation + checkpoint interval of the iteration schedules: at least this many iterations between two.
# A UCF101 epoch at batch 256 is ~33 iterations (one sample per video), so validating and writing a ~1 GB
# checkpoint after every epoch would cost more than the training in between.
PRESET_VAL_EVERY_ITERS = 1000

UNSET = None  # a preset-filled key that the file and --set left alone
DEFAULT_OUT = "runs"


def run_dir(out: str | Path, stream: str, split: int | str) -> Path:
    """The run directory of one stream and split: OUT/STREAM-splitK (checkpoints, log, score files)."""
    return Path(out) / f"{stream}-split{split}"


# What a key may change between: a run and its resumption (RESUME), a run and `trainer test` of its checkpoint
# (TEST). Keys that may change steer speed, placement, validation or the test protocol, not the trained
# weights; every other key is part of what was trained and must stay as the run was made.
RESUME, TEST = "resume", "test"
CONTROL = (RESUME, TEST)  # run controls: where the data is, how many workers, which device, ...


def _h(text: str, default: Any = UNSET, may_change: tuple[str, ...] = ()) -> Any:
    """A dataclass field with a help line (used in the docs and in the written config.toml) and what it may
    change between (RESUME, TEST)."""
    meta = {"help": text, "may_change": frozenset(may_change)}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run of one stream (see docs/trainer.md for each key)."""

    stream: str = _h("spatial (RGB frames) or temporal (stacked optical flow)", "temporal")
    # -- data
    data: str = _h("flow store written by `flowprep extract` (file or master file)", "flows.h5",
                   may_change=CONTROL)
    split: int = _h("split of the dataset's train/test lists (1-based)", 1)
    out: str = _h("runs folder; the run directory is <out>/<stream>-split<split>", DEFAULT_OUT,
                  may_change=(RESUME,))
    val_fraction: float = _h("share of the train list held out for model selection (0 = no hold-out)", 0.1)
    val_seed: int = _h("seed of the hold-out choice (data_manifest.holdout)", 0)
    missing_videos: str = _h("videos of the split absent from the store: error | skip (recorded in meta)",
                             "error", may_change=CONTROL)
    workers: int = _h("DataLoader worker processes per GPU (0 = load in the main process)", 8,
                      may_change=CONTROL)
    decode: str = _h("where JPEGs are decoded and cropped: cpu (loader workers) | device (batched on the training "
                     "device; workers only read bytes) | auto (device on CUDA, else cpu)", "auto", may_change=CONTROL)
    # -- sampling and augmentation
    samples_per_video: int = _h("training samples per video per epoch (frames or stacks; reference: 3)", 1)
    flow_length: int = _h("L: flow fields per temporal stack (2D backbones); input channels = 2L", 10)
    clip_length: int = _h("frames (spatial) or flow fields (temporal) per clip, clip backbones only", 16)
    input_size: int = _h("network input side in pixels; crops are resized to it", 224)
    scales: tuple[float, ...] = _h("multi-scale crop sides as fractions of the short side", PAPER_SCALES)
    corner_crop: bool = _h("crop at the 4 corners or the centre (true) or anywhere (false)", True)
    flip: bool = _h("random horizontal flip in training (flow x is negated)", True)
    # -- model
    arch: str = _h("backbone: " + ", ".join(ARCHS), "resnet101")
    pretrained: str = _h('initial weights: "imagenet" (torchvision\'s ImageNet, or Kinetics for clip models, '
                         'from the torch hub cache, never downloaded; an error if absent), "auto" (those weights '
                         'if present, else random with a warning), "none", or a path to a .pth file', "auto")
    dropout: tuple[float, ...] = _h("dropout before the classifier; VGG: [fc6, fc7] (stream preset if unset)")
    bn: str = _h("BatchNorm in training: auto (partial with pre-trained weights, train without) | train | "
                 "partial (only the first BN adapts) | frozen", "auto")
    # -- optimisation
    batch_size: int = _h("effective (global) batch size, the same on any number of GPUs", 256)
    micro_batch: int = _h("samples per forward pass per process (0 = batch_size / processes); the rest is "
                          "gradient accumulation", 0)
    lr: float = _h("base learning rate (stream preset if unset)")
    momentum: float = _h("SGD momentum", 0.9)
    weight_decay: float = _h("weight decay on conv and linear weights (not on biases or BN)", 5e-4)
    schedule: str = _h("iter-step (lr_steps, max_iters in iterations) | step (lr_steps, epochs in epochs) | "
                       "cosine (over epochs)", "iter-step")
    lr_steps: tuple[int, ...] = _h("milestones where lr is multiplied by lr_gamma (stream preset if unset)")
    lr_gamma: float = _h("factor applied at each milestone", 0.1)
    max_iters: int = _h("stop after this many iterations (0 = no limit; stream preset for iter-step)")
    epochs: int = _h("number of epochs (step and cosine schedules; derived from max_iters for iter-step)", 0)
    precision: str = _h("auto (CUDA: bf16 autocast on compute capability >= 8, else fp16 with a GradScaler; "
                        "CPU: fp32) | fp32 | bf16 | fp16", "auto", may_change=(TEST,))
    channels_last: bool = _h("channels_last (channels_last_3d for clips) memory format on CUDA", True,
                             may_change=CONTROL)
    compile: bool = _h("torch.compile the model", False, may_change=CONTROL)
    device: str = _h("auto | cpu | cuda", "auto", may_change=CONTROL)
    seed: int = _h("random seed: initial weights; dropout (offset by rank); each sample's crop, flip and "
                   "position (keyed by seed, epoch and sample index)", 0)
    # -- validation (model selection) and test protocol
    val_every: int = _h("validate on the hold-out (and checkpoint) every this many epochs", 1,
                        may_change=(RESUME,))
    val_every_iters: int = _h("validate (and checkpoint) only once this many iterations have passed since the "
                              "last validation (preset: 1000 for iter-step, else 0)", may_change=(RESUME,))
    val_frames: int = _h("frames or stacks per hold-out video in the per-epoch validation (centre crop)", 5,
                         may_change=(RESUME,))
    test_frames: int = _h("frames or stacks per video at uniform spacing in the test protocol", 25,
                          may_change=CONTROL)
    test_crops: int = _h("crops per frame: 10 (4 corners + centre and their flips) | 5 (no flips) | 1 (centre)",
                         10, may_change=CONTROL)
    test_crop_scale: float = _h("test crop side as a fraction of the short side, resized to input_size",
                                PAPER_TEST_CROP, may_change=CONTROL)
    test_batch: int = _h("views per forward pass in testing", 250, may_change=CONTROL)

    def __post_init__(self) -> None:
        """Coerce every value to its field's type, fill the stream presets, check values and combinations.

        Here rather than in a builder, so that every way of making a config (the constructor,
        ``dataclasses.replace``, a checkpoint's dict) is checked. Raises ConfigError naming the key.
        """
        for name, kind in _field_types().items():
            value = getattr(self, name)
            if value is not UNSET or name not in PRESET_KEYS:
                object.__setattr__(self, name, _coerce(name, value, kind))
        _check_choice("stream", self.stream, STREAMS)
        if self.arch not in ARCHS:
            close = difflib.get_close_matches(self.arch, ARCHS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"arch {self.arch!r} is not supported{hint}; choose one of {', '.join(ARCHS)}")
        _check_choice("schedule", self.schedule, SCHEDULES)
        for name, value in _presets(self.stream, self.arch, self.schedule).items():
            if getattr(self, name) is UNSET:
                object.__setattr__(self, name, value)
        if self.arch in VGGS and len(self.dropout) == 1:
            object.__setattr__(self, "dropout", self.dropout * 2)  # one value given: the same for fc6 and fc7
        validate(self)

    # -- derived values ----------------------------------------------------------------------------------
    @property
    def is_clip(self) -> bool:
        """True for the 3D clip backbones (input (C, T, H, W))."""
        return self.arch in CLIP_ARCHS

    @property
    def length(self) -> int:
        """Frames or flow fields read per sample: 1 (2D spatial), L (2D temporal), clip_length (clip models)."""
        if self.is_clip:
            return self.clip_length
        return self.flow_length if self.stream == "temporal" else 1

    @property
    def in_channels(self) -> int:
        """Input channels of the first conv: 3 (RGB), 2L (2D flow stack, x/y interleaved), 2 (flow clip)."""
        if self.stream == "spatial":
            return 3
        return 2 if self.is_clip else 2 * self.flow_length

    @property
    def run_dir(self) -> Path:
        return run_dir(self.out, self.stream, self.split)

    def derived(self) -> dict[str, Any]:
        """The computed values, recorded next to the config."""
        return {"in_channels": self.in_channels, "length": self.length, "is_clip": self.is_clip,
                "run_dir": str(self.run_dir)}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def to_toml(self, resolved: dict[str, Any] | None = None) -> str:
        """The resolved config as TOML text, one commented key per line; loads back to an equal config.

        ``resolved``: what "auto" values became on this machine (bn, precision), written as a comment so
        that re-using the file keeps "auto".
        """
        lines = ["# trainer resolved config: every key, presets filled in. Re-use with --config.",
                 "# derived: " + ", ".join(f"{k} = {v}" for k, v in self.derived().items())]
        if resolved:
            lines.append("# resolved at the start of the run: " + ", ".join(f"{k} = {v}" for k, v in resolved.items()))
        for f in dataclasses.fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}  # {f.metadata.get('help', '')}")
        return "\n".join(lines) + "\n"

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied and validated (``dataclasses.replace``, with unknown keys named)."""
        for key in changes:
            _check_key(key, "replace()")
        return _sourced("replace()", dataclasses.replace, self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
RESUME_KEYS = frozenset(k for k, f in FIELDS.items() if RESUME in f.metadata["may_change"])
TEST_TIME_KEYS = frozenset(k for k, f in FIELDS.items() if TEST in f.metadata["may_change"])
# Filled from the stream presets when left unset (None): they depend on the stream, backbone or schedule.
PRESET_KEYS = frozenset({"lr", "dropout", "lr_steps", "max_iters", "val_every_iters"})


@functools.cache
def _field_types() -> dict[str, Any]:
    """Field name -> resolved type (``tuple[float, ...]``, not the string that ``from __future__ import
    annotations`` leaves in ``Field.type``); resolved once, on first use."""
    return typing.get_type_hints(TrainConfig)


def _presets(stream: str, arch: str, schedule: str) -> dict[str, Any]:
    """The values of PRESET_KEYS for this stream, backbone and schedule."""
    values: dict[str, Any] = {"lr": PRESET_LR[stream],
                              "dropout": (PRESET_DROPOUT_VGG if arch in VGGS else PRESET_DROPOUT)[stream]}
    if schedule == "iter-step":
        values.update(lr_steps=PRESET_LR_STEPS[stream], max_iters=PRESET_MAX_ITERS[stream],
                      val_every_iters=PRESET_VAL_EVERY_ITERS)
    else:  # epoch schedules: no iteration milestones, validate every val_every epochs
        values.update(lr_steps=(), max_iters=0, val_every_iters=0)
    return values


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _sourced(source: str, make, *args, **kwargs) -> TrainConfig:
    """``make(*args, **kwargs)`` with the source (file, --set, replace()) put in front of a ConfigError."""
    try:
        return make(*args, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")


def _check_key(key: str, source: str) -> None:
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{source}: unknown config key {key!r}{hint} (known keys: {', '.join(FIELDS)})")


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict. VALUE is read as a TOML value (1e-3, true, [1, 2], "x"), else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
        _check_key(key, "--set")
        text = text.strip()
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word such as resnet18 or /path/to/file.pth
        out[key] = value
    return out


def shipped_configs() -> dict[str, Path]:
    """Config files shipped with the package, by name (file stem)."""
    folder = Path(__file__).with_name("configs")
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def read_config_file(path_or_name: str | Path) -> tuple[dict[str, Any], str]:
    """Read a TOML config (a path, or the name of a shipped config) -> (flat dict, source name)."""
    path = Path(path_or_name)
    if not path.is_file():
        shipped = shipped_configs()
        name = str(path_or_name).removesuffix(".toml")
        if name not in shipped:
            raise ConfigError(f"--config {path_or_name}: no such file and no shipped config of that name "
                              f"(shipped: {', '.join(shipped)})")
        path = shipped[name]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}] is a table; config keys are flat (write `key = value` at the "
                              f"top level)")
        _check_key(key, str(path))
    return data, str(path)


def build_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """The frozen config from flat values (unknown keys refused); errors name ``source``."""
    for key in values:
        _check_key(key, source)
    return _sourced(source, TrainConfig, **values)


def validate(cfg: TrainConfig) -> None:
    """Check values and combinations (called by TrainConfig itself); ConfigError names the key and the fix."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    choices = {"bn": BN_MODES, "precision": PRECISIONS, "device": DEVICES, "decode": DECODES,
               "missing_videos": MISSING_POLICIES}
    for key, allowed in choices.items():
        _check_choice(key, getattr(cfg, key), allowed)
    need(cfg.split >= 1, f"split must be 1 or more, got {cfg.split}")
    need(0.0 <= cfg.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    need(cfg.workers >= 0, f"workers must be >= 0, got {cfg.workers}")
    need(cfg.samples_per_video >= 1, f"samples_per_video must be >= 1, got {cfg.samples_per_video}")
    need(cfg.flow_length >= 1, f"flow_length must be >= 1, got {cfg.flow_length}")
    need(cfg.clip_length >= 1, f"clip_length must be >= 1, got {cfg.clip_length}")
    need(cfg.input_size >= 16, f"input_size must be at least 16 pixels, got {cfg.input_size}")
    if cfg.arch == "inception_v3":
        need(cfg.input_size >= 75, f"inception_v3 needs input_size >= 75, got {cfg.input_size}")
    need(len(cfg.scales) >= 1 and all(0.0 < s <= 1.0 for s in cfg.scales),
         f"scales must be fractions of the short side in (0, 1], got {list(cfg.scales)}")
    need(0.0 < cfg.test_crop_scale <= 1.0, f"test_crop_scale must be in (0, 1], got {cfg.test_crop_scale}")
    n_drop = 2 if cfg.arch in VGGS else 1
    need(len(cfg.dropout) == n_drop, f"dropout for {cfg.arch} takes {n_drop} value(s)"
         f"{' [fc6, fc7]' if n_drop == 2 else ''}, got {list(cfg.dropout)}")
    need(all(0.0 <= p < 1.0 for p in cfg.dropout), f"dropout values must be in [0, 1), got {list(cfg.dropout)}")
    need(bool(cfg.pretrained), 'pretrained must be "imagenet", "auto", "none" or a path to a weights file')
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.micro_batch >= 0, f"micro_batch must be >= 0 (0 = batch_size / processes), got {cfg.micro_batch}")
    need(cfg.lr > 0 and math.isfinite(cfg.lr), f"lr must be a positive number, got {cfg.lr}")
    need(0.0 <= cfg.momentum < 1.0, f"momentum must be in [0, 1), got {cfg.momentum}")
    need(cfg.weight_decay >= 0.0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(0.0 < cfg.lr_gamma <= 1.0, f"lr_gamma must be in (0, 1], got {cfg.lr_gamma}")
    need(list(cfg.lr_steps) == sorted(set(cfg.lr_steps)) and all(s > 0 for s in cfg.lr_steps),
         f"lr_steps must be increasing positive integers, got {list(cfg.lr_steps)}")
    need(cfg.max_iters >= 0, f"max_iters must be >= 0, got {cfg.max_iters}")
    need(cfg.epochs >= 0, f"epochs must be >= 0, got {cfg.epochs}")
    if cfg.schedule == "iter-step":
        need(cfg.max_iters > 0, "schedule 'iter-step' needs max_iters > 0 (the iteration to stop at)")
        need(all(s < cfg.max_iters for s in cfg.lr_steps),
             f"lr_steps are iterations for schedule 'iter-step' and must lie below max_iters {cfg.max_iters}, "
             f"got {list(cfg.lr_steps)}")
    else:
        need(cfg.epochs > 0, f"schedule {cfg.schedule!r} needs epochs > 0")
    if cfg.schedule == "step":
        need(all(s < cfg.epochs for s in cfg.lr_steps),
             f"lr_steps are epochs for schedule 'step' and must lie below epochs {cfg.epochs}, "
             f"got {list(cfg.lr_steps)}")
    need(cfg.seed >= 0, f"seed must be >= 0 (samples are keyed by (seed, epoch, index)), got {cfg.seed}")
    need(cfg.val_every >= 1, f"val_every must be >= 1, got {cfg.val_every}")
    need(cfg.val_every_iters >= 0, f"val_every_iters must be >= 0, got {cfg.val_every_iters}")
    need(cfg.val_frames >= 1, f"val_frames must be >= 1, got {cfg.val_frames}")
    need(cfg.test_frames >= 1, f"test_frames must be >= 1, got {cfg.test_frames}")
    _check_choice("test_crops", cfg.test_crops, TEST_CROPS)
    # Mirrored test views of a net never trained on mirrors are inputs it has not seen; on classes that a
    # mirror changes (left/right motion, rotation sense) they vote for the wrong class.
    need(cfg.flip or cfg.test_crops != 10, "flip = false with test_crops = 10: 5 of the 10 test views are "
         "mirror images, which a model trained without flips has never seen; set test_crops = 5 (or 1), or "
         "flip = true")
    need(cfg.test_batch >= 1, f"test_batch must be >= 1, got {cfg.test_batch}")


def load_config(stream: str, config: str | Path | None = None, overrides: dict[str, Any] | None = None,
                options: dict[str, Any] | None = None) -> TrainConfig:
    """The resolved config of a run: defaults < presets < file < --set overrides < explicit options."""
    values: dict[str, Any] = {}
    source = "defaults"
    if config is not None:
        values, source = read_config_file(config)
        if "stream" in values and values["stream"] != stream:
            raise ConfigError(f"{source}: this config is for the {values['stream']} stream, but the "
                              f"{stream} stream was asked for; use the matching config or `trainer run "
                              f"{values['stream']}`")
    values["stream"] = stream
    for key, value in (overrides or {}).items():
        _check_key(key, "--set")
        if key == "stream" and value != stream:
            raise ConfigError(f"--set stream={value}: the stream is given by the command (`trainer run {stream}`)")
        values[key] = value
    for key, value in (options or {}).items():
        if value is not None:
            values[key] = value
    return build_config(values, source=source if not overrides else f"{source} + --set")


def config_from_dict(data: dict[str, Any], source: str) -> TrainConfig:
    """Rebuild a config saved in a checkpoint or config.toml (unknown keys are still an error)."""
    return build_config(dict(data), source=source)
