"""Checkpoints: the only writer of ``checkpoint_*.pt`` files, and their reader.

A checkpoint is a plain dict (torchvision-reference style), loadable with ``torch.load(weights_only=True)``:

    format          "trainer-checkpoint/1"
    kind            "last" (everything needed to resume) or "best" (model for testing)
    model           state_dict of the bare network (no DDP / compile prefixes)
    optimizer       SGD state_dict                     (last only)
    lr_scheduler    LambdaLR state_dict                (last only)
    scaler          GradScaler state_dict ({} unless fp16) (last only)
    epoch           epochs completed (1-based count)
    iteration       optimizer steps completed
    config          the resolved config (dict, see trainer.config)
    derived         derived values (in_channels, length, ...)
    classes         class names, index = label
    history         per-epoch log rows (list of dicts), so log.csv can be rebuilt exactly on resume
    best            {"epoch", "val_top1", "val_loss", "selected_by"}
    init            {"note": where the initial weights came from, "pretrained": bool, "bn": resolved mode}
    flow            the training store's recorded settings (FlowStore.attrs: algo, params, implementation,
                    size, interpolation, bound, rounding, codec, jpeg_quality, versions): how the model's
                    frames and flow were made, so new videos can be made the same way (`fusion predict`);
                    absent from checkpoints written before it was recorded

Files are written to a temporary name in the same folder, fsynced and renamed, so a killed run leaves
either the previous checkpoint or the new one, never half of one. A SIGKILL during a write leaves the
temporary file (``.checkpoint_last.pt.<random>.tmp``, up to a few GB); the next run removes it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plumbing.atomic import atomic_open
from trainer.errors import CheckpointError

FORMAT = "trainer-checkpoint/1"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
REQUIRED = ("format", "kind", "model", "epoch", "config")
RESUME_REQUIRED = ("optimizer", "lr_scheduler", "scaler", "iteration", "history")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format tag) atomically: temp file in the same folder, fsync, rename."""
    import torch

    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(dict(state, format=FORMAT), f)
    return path


def load_checkpoint(path: str | os.PathLike, for_resume: bool = False) -> dict[str, Any]:
    """Read and check a checkpoint; CheckpointError names the file and the fix."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train first with `trainer run` or give the right path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors all mean a damaged or foreign file
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc}); it is damaged or not a trainer "
                              f"checkpoint") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a trainer checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    missing = [k for k in REQUIRED + (RESUME_REQUIRED if for_resume else ()) if k not in state]
    if missing:
        what = "resume from" if for_resume else "use"
        raise CheckpointError(f"{path}: a {state.get('kind')!r} checkpoint lacks {', '.join(missing)}; cannot "
                              f"{what} it (resume needs {LAST})")
    return state


def flow_settings(store) -> dict[str, Any]:
    """What a checkpoint records of the store it was trained on (``flow``): the store's config as its public
    reader gives it (flowprep.FlowStore.attrs), a JSON-ready dict."""
    import json

    return json.loads(json.dumps(dict(store.attrs)))


def remove_run_outputs(run_dir: Path) -> None:
    """Delete the files a run writes (for --fresh); other files in the folder are left alone."""
    from trainer.scores import score_file_name

    for name in (LAST, BEST, "config.toml", "log.csv", "curves.png", score_file_name("test"), score_file_name("val")):
        (run_dir / name).unlink(missing_ok=True)
    for events in Path(run_dir).glob("events.out.tfevents.*"):  # TensorBoard's (trainer.logs.Board)
        events.unlink(missing_ok=True)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete half-written checkpoint temporaries left by a killed run (call before this run writes any)."""
    removed = []
    for name in (LAST, BEST):
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
