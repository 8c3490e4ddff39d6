"""What `fusion predict` applies to new videos: the trained streams of a split (checkpoint, test config, the
flow settings they were trained on) and the fusion choice of the split's report.

Models are found as `fusion report` finds their score files: ``RUNS/{spatial,temporal}-split{k}/``, where
``trainer run`` leaves ``checkpoint_best.pt`` beside ``scores_test.npz``. The fusion choice is read from the
report `fusion report` wrote (``RUNS/fusion-split{k}/report.json``): its default method, weights and views ->
video aggregation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion import inputs
from fusion.aggregate import AGGREGATIONS, DEFAULT_AGGREGATION
from fusion.errors import PredictError
from trainer.checkpoint import BEST
from trainer.config import run_dir

REPORT_FILE = "report.json"
METHODS = ("average", "max", "weighted", "confidence", "learned")  # "sweep" is tuned on test: never applied
NO_REPORT_METHOD = "average"  # fusion report's default when it has no weights (fusion.evaluate)
FAST_VIEWS = (5, 1)  # the `fast` preset: 5 frames or stacks x the centre crop (README: measured speed)


@dataclass
class Stream:
    """One trained stream, ready to score views: the network in eval mode on the device and its test config.

    cfg: the trainer config the views are cut with (the run's test-time config, frames x crops as chosen);
    flow: the recorded settings of the store it was trained on (flowprep's store config); classes: C names.
    """

    name: str
    checkpoint: Path
    model: Any
    cfg: Any
    classes: list[str]
    flow: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fusion:
    """How the streams' video scores are combined: method, weights (stream order), views -> video, and
    where the choice came from (for the console and the JSON)."""

    method: str
    weights: tuple[float, ...] | None
    aggregation: str
    source: str


def default_checkpoints(runs: str | os.PathLike, split: int) -> dict[str, Path]:
    """{stream: RUNS/<stream>-split<k>/checkpoint_best.pt}, beside the score files fusion report reads."""
    return {name: run_dir(runs, name, split) / BEST for name in inputs.DEFAULT_STREAMS}


def parse_views(text: str) -> tuple[int, int] | None:
    """``test`` -> None (each run's test protocol), ``fast`` -> FAST_VIEWS, ``FxK`` -> (F, K); PredictError."""
    text = text.strip().lower()
    if text == "test":
        return None
    if text == "fast":
        return FAST_VIEWS
    try:
        frames, crops = (int(p) for p in text.split("x"))
    except ValueError:
        raise PredictError(f"--views must be test, fast or FRAMESxCROPS (e.g. 25x10), got {text!r}") from None
    if frames < 1 or crops not in (1, 5, 10):
        raise PredictError(f"--views {text}: frames must be at least 1 and crops 1, 5 or 10")
    return frames, crops


def load_stream(name: str, checkpoint: Path, device: str, views: tuple[int, int] | None, store: str | None = None):
    """The stream of ``checkpoint``: its network on ``device`` ("cpu" | "cuda" | "auto") in eval mode, and the
    config its views are cut with. Returns (Stream, trainer Env). PredictError names the file and the fix."""
    from trainer.checkpoint import load_checkpoint
    from trainer.config import config_from_dict
    from trainer.distributed import setup
    from trainer.errors import TrainerError
    from trainer.evaluation import model_to_memory_format
    from trainer.models import build_model, saved_init

    try:
        state = load_checkpoint(checkpoint)
        saved = config_from_dict(state["config"], f"{checkpoint}:config")
        if saved.stream != name:
            raise PredictError(f"{checkpoint}: a {saved.stream} checkpoint, given as the {name} stream")
        classes = [str(c) for c in state.get("classes") or []]
        if not classes:
            raise PredictError(f"{checkpoint}: records no class names; it cannot name its predictions")
        test_cfg, notes = _test_config(saved, checkpoint, views)
        env = setup(device)
        cfg = test_cfg.replace(workers=0, device=device)  # views are cut in this process (one video at a time)
        model, _ = build_model(saved, len(classes), warn=False, init=saved_init(state, saved))
        model.load_state_dict(state["model"])
        model = model_to_memory_format(model.to(env.device).eval(), cfg, env)
    except TrainerError as exc:
        raise PredictError(str(exc)) from exc
    flow, note = recorded_flow(state, checkpoint, saved.data, store)
    return Stream(name, checkpoint, model, cfg, classes, flow, notes + ([note] if note else [])), env


def _test_config(saved, checkpoint: Path, views: tuple[int, int] | None):
    """The run's test-time config: that of its score file (``scores_test.npz`` beside the checkpoint, when it
    scored this checkpoint: `trainer test --set test_frames=...` changes it), else the checkpoint's own;
    with ``views`` (frames, crops) replacing its protocol. Returns (config, notes)."""
    from trainer.config import config_from_dict
    from trainer.scores import ScoreFileError, read_scores

    cfg, notes = saved, []
    scores_path = checkpoint.parent / inputs.TEST_FILE
    if scores_path.is_file():
        try:
            meta = read_scores(scores_path).meta or {}
        except ScoreFileError as exc:
            meta = {}
            notes.append(f"{scores_path} unreadable ({exc}); views from the checkpoint's config")
        tested = Path(str(meta.get("checkpoint", ""))).parts[-2:]  # run folder and file: a moved runs folder matches
        if tested == checkpoint.resolve().parts[-2:] and isinstance(meta.get("config"), dict):
            cfg = config_from_dict(meta["config"], f"{scores_path}:meta.config")
    if views is not None:
        cfg = cfg.replace(test_frames=views[0], test_crops=views[1])
    return cfg, notes


def recorded_flow(state: dict[str, Any], checkpoint: Path, data: str, store: str | None) -> tuple[dict, str]:
    """The flow settings a model was trained on: the checkpoint's ``flow`` record; for a checkpoint written
    before it existed, the config of the store given with --store or named in its config (if it still
    exists). Returns (settings, note); PredictError when they cannot be known, naming the fix."""
    if isinstance(state.get("flow"), dict):  # recorded: --store is only for checkpoints without the record
        return state["flow"], ""
    from flowprep import FlowStore, StoreError

    path = Path(store) if store else Path(data)
    why = (f"{checkpoint} does not record the flow settings it was trained with (written before "
           "checkpoints kept them)")
    if store is None and not path.is_file():
        raise PredictError(f"{why}, and the store its config names, {path}, is gone; pass --store PATH (the "
                           "store it was trained on), or re-train it so that the checkpoint records them")
    try:
        with FlowStore(path) as opened:
            settings, classes = dict(opened.attrs), opened.manifest.classes
    except StoreError as exc:
        raise PredictError(f"{why}; reading them from {path} failed: {exc}") from exc
    if [str(c) for c in state.get("classes") or []] != list(classes):
        raise PredictError(f"{path}: its classes differ from those {checkpoint} was trained on; pass the "
                           "store it was trained on with --store")
    source = "given with --store" if store else "named in its config"
    return settings, (f"{checkpoint.name} of {checkpoint.parent.name}: flow settings read from {path} ({source}); "
                      "newer checkpoints record them")


def read_fusion(report: Path | None, streams: list[str], checkpoints: dict[str, Path], method: str | None,
                weights: tuple[float, ...] | None, aggregation: str | None) -> tuple[Fusion, list[str]]:
    """The fusion to apply: the report's default method with its weights and aggregation, overridden by
    what the command line gives. Without a report: NO_REPORT_METHOD and mean logits, said in a note.
    Returns (Fusion, notes); PredictError for a report that cannot be used or a method that lacks weights."""
    if weights is not None and method not in (None, "weighted"):
        raise PredictError(f"--weights go with --method weighted, not {method}")
    method = "weighted" if weights is not None else method  # as in `fusion report`: given weights are the choice
    notes: list[str] = []
    chosen, given = None, method is not None
    if report is not None and report.is_file():
        chosen = _report_choice(report, streams, checkpoints, notes)
    elif report is not None:
        notes.append(f"no fusion report at {report}: fusing with `{method or NO_REPORT_METHOD}`"
                     f"{'' if method else ' (the default without a report)'}; run `fusion report` to choose")
    method = method or (chosen["method"] if chosen else NO_REPORT_METHOD)
    if method not in METHODS:
        raise PredictError(f"--method {method}: choose one of {', '.join(METHODS)}")
    agg = aggregation or (chosen["aggregation"] if chosen else DEFAULT_AGGREGATION)
    if agg not in AGGREGATIONS:
        raise PredictError(f"aggregation {agg!r} is unknown; choose one of {', '.join(AGGREGATIONS)}")
    if method in ("weighted", "learned") and weights is None:
        weights = (chosen or {}).get("weights", {}).get(method)
        if weights is None:
            raise PredictError(f"--method {method} needs weights: " + (
                "give --weights W_SPATIAL W_TEMPORAL" if method == "weighted" else
                f"the report{f' {report}' if report else ''} has no weights learned on validation scores; "
                "give --method weighted --weights W_SPATIAL W_TEMPORAL"))
    source = (f"chosen by {report}" if chosen and method == chosen["method"] else
              "given on the command line" if chosen or report is None or given else "the default: no report")
    return Fusion(method, tuple(float(w) for w in weights) if weights is not None else None, agg, source), notes


def _report_choice(report: Path, streams: list[str], checkpoints: dict[str, Path], notes: list[str]) -> dict:
    """{"method", "weights": {method: weights}, "aggregation"} from a report.json; notes when it was made
    with other streams or other checkpoints than the ones applied."""
    from fusion.report import REPORT_FORMAT

    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PredictError(f"{report}: not a readable fusion report ({exc}); run `fusion report` again or pass "
                           "--method") from exc
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise PredictError(f"{report}: not a fusion report (format {found!r}); give the report.json of `fusion report`")
    if list(data.get("streams") or []) != streams:
        raise PredictError(f"{report}: reports streams {data.get('streams')}, not {streams}; pass --method (and "
                           "--weights) or --report with the report of these streams")
    protocol = data.get("protocol") or {}
    weights = {k: v for k, v in (protocol.get("weights") or {}).items()
               if isinstance(v, list) and len(v) == len(streams)}
    for f in data.get("score_files") or []:
        used = checkpoints.get(f.get("stream"))
        tested = (f.get("meta") or {}).get("checkpoint")
        if used is not None and tested and Path(tested).parts[-3:] != used.resolve().parts[-3:]:
            notes.append(f"{report} was made from the scores of {tested}, not of {used}: its fusion choice may not "
                         "fit this model; re-run `trainer test` and `fusion report`")
    return {"method": data.get("default_method"), "weights": weights,
            "aggregation": protocol.get("aggregation", DEFAULT_AGGREGATION)}
