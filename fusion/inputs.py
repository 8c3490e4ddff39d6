"""Where score files live, reading them through trainer.scores, and checking what their meta says."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from trainer.config import DEFAULT_OUT, STREAMS, run_dir
from trainer.scores import Scores, ScoreFileError, read_scores, score_file_name

from fusion.errors import InputError

DEFAULT_RUNS = DEFAULT_OUT
DEFAULT_STREAMS = STREAMS
SPLITS = (1, 2, 3)
TEST_FILE = score_file_name("test")
VAL_FILE = score_file_name("val")


def default_paths(runs: str | os.PathLike, split: int, subset: str = "test") -> list[tuple[str, Path]]:
    """The trainer's score files of a split: ``runs/{stream}-split{k}/scores_{subset}.npz`` per stream."""
    return [(s, run_dir(runs, s, split) / score_file_name(subset)) for s in DEFAULT_STREAMS]


def val_path_for(test_path: str | os.PathLike) -> Path | None:
    """The validation file the trainer writes beside a test file (``scores_test*`` -> ``scores_val*``)."""
    p = Path(test_path)
    test, val = score_file_name("test").removesuffix(".npz"), score_file_name("val").removesuffix(".npz")
    if not p.name.startswith(test):
        return None
    return p.with_name(val + p.name[len(test):])


def missing_hint(name: str, split: int | None) -> str:
    """How to get the score file of a default stream."""
    of_split = f" of split {split}" if split is not None else ""
    return (f"run `trainer test` for the {name} stream{of_split} (it writes this file), or pass "
            "--spatial PATH --temporal PATH or --scores NAME=PATH")


def load(named_paths: Sequence[tuple[str, Path]], hint=None) -> list[tuple[str, Scores]]:
    """Read every score file; a missing or damaged one raises InputError naming the path and the fix.

    ``hint(name)`` gives the fix for a missing file; all missing files are named at once.
    """
    missing = [(n, Path(p)) for n, p in named_paths if not Path(p).is_file()]
    if missing:
        lines = [f"{p}: is a directory, not a score file ({n}); give the file, e.g. {p / TEST_FILE}" if p.is_dir()
                 else f"{p}: no such score file ({n}); " + (hint(n) if hint else "check the path")
                 for n, p in missing]
        raise InputError("\n".join(lines))
    out = []
    for name, path in named_paths:
        try:
            out.append((name, read_scores(path)))
        except ScoreFileError as exc:
            raise InputError(f"{name}: {exc}") from exc
    return out


def check_meta(streams: Sequence[tuple[str, Scores]], subset: str, split: int | None) -> list[str]:
    """Compare the files' own meta with how they are used; raise on contradictions, return notes otherwise.

    Errors: two known stream names swapped (a 'temporal' file given as spatial), files of different splits,
    a file of another split than asked for, a test file used as validation or a validation file as test.
    Fields a file does not record are not checked. Notes: the same file given for two streams, a stream or
    subset name that does not match.
    """
    notes = []
    by_hash: dict[str, str] = {}
    for name, s in streams:
        if s.sha256 and s.sha256 in by_hash:
            notes.append(f"{by_hash[s.sha256]} and {name} are the same file ({s.path}, sha256 {s.sha256[:12]}...): "
                         "fusing a stream with itself; give each stream its own score file")
        by_hash.setdefault(s.sha256, name)
    splits = {}
    for name, s in streams:
        meta = s.meta or {}
        stream = meta.get("stream")
        if stream is not None and str(stream) != name:
            if name in DEFAULT_STREAMS and str(stream) in DEFAULT_STREAMS:
                raise InputError(f"{s.path}: given as the {name} stream but its meta says stream {stream!r}; "
                                 "are --spatial and --temporal swapped?")
            notes.append(f"{name}: {s.path} says stream {stream!r}")
        file_subset = meta.get("subset")
        if file_subset is not None and str(file_subset) != subset:
            if subset == "val" and str(file_subset) == "test":
                raise InputError(f"{s.path}: given as validation scores of {name} but its meta says subset "
                                 "'test'; weights must never be tuned on test")
            if subset == "test" and str(file_subset) == "val":
                raise InputError(f"{s.path}: given as the test scores of {name} but its meta says subset 'val'; "
                                 f"give the {TEST_FILE} file as the test stream (validation files go to "
                                 "--val NAME=PATH)")
            notes.append(f"{name}: {s.path} used as {subset} scores but its meta says subset {file_subset!r}")
        if meta.get("split") is not None:
            splits[name] = str(meta["split"])
    if len(set(splits.values())) > 1:
        raise InputError(f"{subset} score files come from different splits: "
                         + ", ".join(f"{n} split {k}" for n, k in splits.items()))
    if split is not None:
        for name, k in splits.items():
            if k != str(split):
                path = dict(streams)[name].path
                raise InputError(f"{path}: asked for split {split} but the {name} file says split {k}")
    return notes


def _same_checkpoint(a: dict, b: dict) -> bool:
    """Whether two score files' meta name the same checkpoint. Paths are compared by their last three parts
    (runs folder, run directory, file) with the epoch, so a runs folder moved to another machine still
    matches; files that do not record a checkpoint (other tools) are not compared."""
    if not a.get("checkpoint") or not b.get("checkpoint"):
        return True
    pa, pb = Path(str(a["checkpoint"])), Path(str(b["checkpoint"]))
    return pa.parts[-3:] == pb.parts[-3:] and a.get("checkpoint_epoch") == b.get("checkpoint_epoch")


def check_val_against_test(test: Sequence[tuple[str, Scores]], val: Sequence[tuple[str, Scores]]) -> list[str]:
    """Validation files must come from the test files' split; other view counts only give a note.

    Weights are learned on validation scores and applied to test ones, so both must come from the same
    models, hence the same split. Different frames x crops are allowed (a cheaper validation protocol), but
    noted: views -> video then averages a different number of views, which can shift the best weights.
    """
    test_splits = {str((s.meta or {})["split"]) for _, s in test if (s.meta or {}).get("split") is not None}
    for name, s in val:
        k = (s.meta or {}).get("split")
        if k is not None and test_splits and str(k) not in test_splits:
            raise InputError(f"{s.path}: validation scores of {name} say split {k} but the test files say split "
                             f"{', '.join(sorted(test_splits))}; give the validation files of the same split "
                             "(--val NAME=PATH)")
    test_by_name = dict(test)
    for name, s in val:
        if name in test_by_name and not _same_checkpoint(test_by_name[name].meta or {}, s.meta or {}):
            t = test_by_name[name].meta
            raise InputError(f"{name}: the validation scores ({s.path}) come from checkpoint "
                             f"{s.meta.get('checkpoint')} (epoch {s.meta.get('checkpoint_epoch')}) but the test "
                             f"scores ({test_by_name[name].path}) from {t.get('checkpoint')} (epoch "
                             f"{t.get('checkpoint_epoch')}): weights learned on one model would be applied to "
                             "another; re-run `trainer test STREAM --subset both` so both come from one checkpoint")
    notes = []
    views = {name: s.logits.shape[1:3] for name, s in test}
    for name, s in val:
        if name in views and s.logits.shape[1:3] != views[name]:
            (tf, tk), (vf, vk) = views[name], s.logits.shape[1:3]
            notes.append(f"{name}: validation scores have {vf} frames x {vk} crops ({s.path}) but test scores "
                         f"{tf} x {tk}; weights learned on val are applied to test scores of other view counts")
    return notes
