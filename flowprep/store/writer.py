"""Writing flow stores: one video's datasets, the final store assembled from parts, master files, and the
lock that makes one process the only writer of a store. The only writer of store files."""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from plumbing.atomic import exclusive_lock_or, fsync_dir
from flowprep.errors import OptionError, StoreError
from flowprep.store.codec import CODECS
from flowprep.store.format import (FORMAT, incompatibilities, is_disk_full, making_command, open_store_file,
                                   read_config, read_contents)

_SHARD = re.compile(r"([0-9]+)/([0-9]+)")


def write_video(group, video, codec: str) -> None:
    """Write a flowprep.outcomes.EncodedVideo's images, checksums and record into the empty h5py ``group``."""
    for kind, images, crcs in (("rgb", video.rgb, video.rgb_crcs), ("flow", video.flow, video.flow_crcs)):
        if CODECS[codec].jpeg:
            offsets = np.zeros(len(images) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(c) for c in images])
            blob = np.concatenate(images) if images else np.zeros(0, np.uint8)
            group.create_dataset(f"{kind}_jpeg", data=blob, dtype=np.uint8)
            group.create_dataset(f"{kind}_offsets", data=offsets)
        else:
            data = np.stack(images)  # (n, H, W, c)
            group.create_dataset(kind, data=data, dtype=np.uint8, chunks=(1, *data.shape[1:]))
        group.create_dataset(f"{kind}_crcs", data=crcs, dtype=np.uint32)
    group.attrs["record"] = json.dumps(video.record, sort_keys=True)


def new_file(path: Path, kind: str, config: dict[str, Any], **attrs):
    """A new h5py.File of ``kind`` marked incomplete until `finish_file`."""
    import h5py

    f = h5py.File(path, "w")
    f.attrs.update(format=FORMAT, kind=kind, complete=False, config=json.dumps(config, sort_keys=True), **attrs)
    return f


def finish_file(f, tmp: Path, final: Path) -> Path:
    """Mark ``f`` complete, fsync and close it, and rename ``tmp`` to ``final`` (durably)."""
    f.attrs["complete"] = True
    f.flush()
    os.fsync(f.id.get_vfd_handle())
    f.close()
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


@contextlib.contextmanager
def writer_lock(store: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive right to write ``store`` (and its parts folder); StoreError if another run has it.

    The lock is an flock on ``<store>.lock`` (plumbing.atomic.exclusive_lock): the kernel drops it when
    the holder dies, even by SIGKILL. Also the first write of a run, so an --out that cannot be written
    fails here, with the path named.
    """
    store = Path(store)
    path = store.with_name(store.name + ".lock")
    # the holder's command (extract or import), from the work it keeps in <store>.parts/
    holder = lambda: f"flowprep {making_command(store) or 'extract'}"  # noqa: E731
    with exclusive_lock_or(path, StoreError, holder, store, "an --out"):
        yield path


def assemble(out: str | os.PathLike, part_files: Sequence[Path], previous: str | os.PathLike | None,
             config: dict[str, Any], manifest_text: str, expected_ids: Sequence[str],
             failures: Sequence[dict[str, str]], keep: Iterable[str] | None = None) -> Path:
    """Build the final store ``out`` from the previous store (if any) and new part files, atomically.

    keep: the videos of the previous store to carry over (default all); the others are left out, so a
    video removed from the dataset or redone does not linger. On any error (a full disk among them) the
    temporary file is removed and StoreError says what happened; the parts are left for a re-run.
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        _assemble_into(tmp, part_files, previous, config, manifest_text, expected_ids, failures, keep)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, StoreError) or not isinstance(exc, (OSError, RuntimeError)):
            raise
        what = "no space left on device" if is_disk_full(exc) else f"{type(exc).__name__}: {exc}"
        raise StoreError(f"{what} writing {tmp}; free space (or fix the problem) and re-run the same command: "
                         f"finished videos are kept in {out.name}.parts/") from exc
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def _assemble_into(tmp: Path, part_files, previous, config, manifest_text, expected_ids, failures, keep) -> None:
    import h5py

    f = new_file(tmp, "store", config, expected=len(expected_ids))
    with f as dst:
        dst.create_dataset("manifest", data=manifest_text, dtype=h5py.string_dtype())
        dst.create_dataset("expected_ids", data=list(expected_ids), dtype=h5py.string_dtype())
        dst.create_dataset("failures", data="\n".join(json.dumps(x, sort_keys=True) for x in failures),
                           dtype=h5py.string_dtype())
        videos = dst.create_group("videos")
        keep = None if keep is None else set(keep)
        sources = [(Path(previous), True)] if previous else []
        sources += [(Path(p), False) for p in part_files]
        for src_path, is_previous in sources:
            with open_store_file(src_path, kinds=("store",) if is_previous else ("part",)) as src:
                for vid in src["videos"]:
                    if is_previous and keep is not None and vid not in keep:
                        continue
                    if vid in videos:
                        del videos[vid]  # a newer part replaces an older copy of the same video
                    src.copy(src["videos"][vid], videos, name=vid)
        dst.attrs["complete"] = True
        dst.flush()
        os.fsync(dst.id.get_vfd_handle())


def write_master(out: str | os.PathLike, shards: Sequence[str | os.PathLike], partial: bool = False) -> Path:
    """A master file that reads ``shards`` as one store; checks they agree, do not overlap and are all there.

    Refuses (OptionError) an ``out`` that is one of the shards and a shard given twice, before writing
    anything. An incomplete set (shard 2/4 missing) is a StoreError unless ``partial``.
    """
    out = Path(out).absolute()
    if not shards:
        raise OptionError("no shard files given to merge")
    _check_distinct(out, [Path(s) for s in shards])
    first, index, seen = None, {}, {}
    for shard in map(Path, shards):
        with open_store_file(shard, kinds=("store",)) as f:
            config, contents = read_config(f, shard), read_contents(f, shard)
        if first is None:
            first = (config, contents["manifest"])
        elif diff := incompatibilities(first[0], config):
            raise StoreError(f"{shard} was extracted with other settings than {shards[0]}: {'; '.join(diff)}")
        elif contents["manifest"] != first[1]:
            raise StoreError(f"{shard} was extracted from another version of the dataset than {shards[0]} "
                             "(their manifests differ); re-run the older shards' extraction on the same dataset")
        # a shard written without a number (by hand, or by an old version) is not checked for completeness
        match = _SHARD.fullmatch(str(config.get("shard", "")))
        if match:
            key = (int(match.group(1)), int(match.group(2)))
            if key in index:
                raise StoreError(f"{shard} and {index[key]} are both shard {key[0]}/{key[1]}; give each shard once")
            index[key] = shard
        for vid in contents["records"]:
            if vid in seen:
                raise StoreError(f"video {vid!r} is in both {seen[vid]} and {shard}; shards must not overlap")
            seen[vid] = shard
    absent = _absent_shards(index)
    if absent and not partial:
        raise StoreError(f"shard {', '.join(absent)} of {absent[0].split('/')[1]} is not among the files given, "
                         "so the merged store would miss those videos; give every shard, or pass --partial to "
                         "merge only these")
    rel = [os.path.relpath(Path(s).absolute(), out.parent) for s in shards]
    tmp = out.with_name(out.name + ".tmp")
    f = new_file(tmp, "master", first[0], shards=json.dumps(rel), missing_shards=json.dumps(absent))
    return finish_file(f, tmp, out)


def _check_distinct(out: Path, shards: list[Path]) -> None:
    seen: dict[Path, Path] = {}
    for shard in shards:
        real = shard.resolve()
        if real == out.resolve() or (out.exists() and shard.exists() and os.path.samefile(out, shard)):
            raise OptionError(f"--out {out} is one of the shard files to merge; writing it would destroy that "
                              "shard: choose another name for the master file, e.g. flows.h5")
        if real in seen:
            raise OptionError(f"shard {shard} is given twice ({seen[real]} and {shard}); give each once")
        seen[real] = shard


def _absent_shards(index: dict[tuple[int, int], Path]) -> list[str]:
    """'I/N' of the shards of the series that are not in ``index``; StoreError for mixed series."""
    counts = {n for _, n in index}
    if len(counts) > 1:
        raise StoreError(f"the shards come from different splits ({', '.join(f'{i}/{n}' for i, n in sorted(index))}"
                         "); merge shards of one `--shard I/N` series")
    n = counts.pop() if counts else 0
    return [f"{i}/{n}" for i in range(1, n + 1) if (i, n) not in index]

