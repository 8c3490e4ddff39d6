"""The flow store: HDF5 files holding RGB frames and quantised flow per video. The only writer of them.

Layout of one store file (``kind`` = "store"):

    /                       attrs: format, kind, complete, config (JSON), expected (count)
    /manifest               the dataset manifest (data_manifest text format), all videos of the dataset
    /expected_ids           the video ids this file was asked to hold (a shard holds a subset)
    /failures               JSON lines: {"video_id", "path", "reason"} of videos that could not be extracted
    /videos/<video_id>      attrs: per-video record (frames, flows, fps, source size, clipped share, crc32...)
        codec "jpeg":  rgb_jpeg (bytes,) uint8 + rgb_offsets (frames+1,) int64
                       flow_jpeg (bytes,) uint8 + flow_offsets (flows+1,) int64
                       (one gray JPEG per flow field, x and y side by side: (H, 2W))
        codec "raw":   rgb (frames, H, W, 3) uint8, flow (flows, H, W, 2) uint8

Flow k lies between frames k and k+1 (0-based); flows = frames - 1.

Durability: each video is first written by exactly one process into its own part file
(``<out>.parts/<key>.h5``) under a temporary name, fsynced and renamed, so a part either exists whole or not
at all. When every video is done, the parts are assembled into ``<out>.tmp``, which is fsynced and renamed to
``<out>`` with ``complete=True``. A killed run therefore never leaves a half-written file under a final name.

While a run writes ``<out>``, it holds an exclusive lock (fcntl.flock) on ``<out>.lock``, which names its
pid; a second run on the same ``<out>`` fails at once. A worker writes ``<key>.started`` before it decodes a
video and removes it when the part or the failure record is written, so a video whose marker outlives its
worker is the one that crashed it.

A master file (``kind`` = "master") lists shard files (paths relative to it) to be read as one store.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from data_manifest.atomic import atomic_write, exclusive_lock_or, fsync_dir
from flowprep.errors import OptionError, StoreError

FORMAT = "flowprep-store/1"
CODECS = ("jpeg", "raw")
DEFAULT_CODEC = "jpeg"
DEFAULT_JPEG_QUALITY = 95
INDEX_CONVENTION = "0-based; flow k lies between RGB frames k and k+1; flows = frames - 1"
FLOW_LAYOUT = "(n, H, W, 2) uint8, channel 0 = x (horizontal), channel 1 = y (vertical)"
DATASET_CACHE = 1024  # open per-video datasets a reader keeps (per process)
# Settings that must agree for a resumed run or for shards merged into one store.
COMPAT_KEYS = ("algo", "params", "bound", "rounding", "codec", "jpeg_quality", "size", "interpolation",
               "implementation")


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def part_key(video_id: str) -> str:
    """File-system-safe, stable name of a video's part file."""
    return hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:20]


def _jpeg_encode(image: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise StoreError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.reshape(-1)


def encode_jpeg(kind: str, array: np.ndarray, quality: int) -> np.ndarray:
    """The stored JPEG bytes of one RGB frame ((H, W, 3) uint8) or flow field ((H, W, 2) uint8, stored as
    one gray image (H, 2W), x | y). Thread-safe (cv2 releases the GIL while it encodes)."""
    if kind == "rgb":
        image = array[..., ::-1]  # OpenCV encodes BGR
    else:
        image = np.concatenate([array[..., 0], array[..., 1]], axis=1)
    return _jpeg_encode(np.ascontiguousarray(image), quality)


class PartWriter:
    """Writes one video into its own part file, frame by frame; `finish` makes it durable and final."""

    def __init__(self, parts_dir: str | os.PathLike, video_id: str, config: dict[str, Any]):
        import h5py

        self.parts_dir = Path(parts_dir)
        self.video_id = video_id
        self.codec = config["codec"]
        self.quality = int(config.get("jpeg_quality") or DEFAULT_JPEG_QUALITY)
        self.final = self.parts_dir / f"{part_key(video_id)}.h5"
        self.tmp = self.parts_dir / f"{part_key(video_id)}.h5.{os.getpid()}.tmp"
        self._h5 = h5py.File(self.tmp, "w")
        self._h5.attrs.update(format=FORMAT, kind="part", complete=False, config=json.dumps(config, sort_keys=True))
        self._group = self._h5.create_group("videos").create_group(video_id)
        self._bytes = {"rgb": [], "flow": []}  # jpeg codec: encoded images, written at finish
        self._crc = {"rgb": 0, "flow": 0}
        self._count = {"rgb": 0, "flow": 0}

    def _add(self, kind: str, array: np.ndarray) -> None:
        if self.codec == "jpeg":
            self.add_encoded(kind, encode_jpeg(kind, array, self.quality))
            return
        data = np.ascontiguousarray(array)
        if kind not in self._group:
            self._group.create_dataset(kind, shape=(0, *data.shape), maxshape=(None, *data.shape),
                                       dtype=np.uint8, chunks=(1, *data.shape))
        ds = self._group[kind]
        ds.resize(self._count[kind] + 1, axis=0)
        ds[self._count[kind]] = data
        self._crc[kind] = zlib.crc32(data.tobytes(), self._crc[kind])
        self._count[kind] += 1

    def add_encoded(self, kind: str, data: np.ndarray) -> None:
        """Append one image already encoded by encode_jpeg (codec jpeg), so encoding can run elsewhere."""
        if self.codec != "jpeg":
            raise StoreError(f"add_encoded is for the jpeg codec; this part file uses {self.codec!r}")
        self._bytes[kind].append(data)
        self._crc[kind] = zlib.crc32(data.tobytes(), self._crc[kind])
        self._count[kind] += 1

    def add_rgb(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        self._add("rgb", frame)

    def add_flow(self, field: np.ndarray) -> None:
        """Append one (H, W, 2) uint8 quantised flow field, x then y."""
        self._add("flow", field)

    def finish(self, record: dict[str, Any]) -> Path:
        """Write the remaining data and the record, fsync, rename to the final part name."""
        if self.codec == "jpeg":
            for kind in ("rgb", "flow"):
                chunks = self._bytes[kind]
                offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
                offsets[1:] = np.cumsum([len(c) for c in chunks])
                blob = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
                self._group.create_dataset(f"{kind}_jpeg", data=blob, dtype=np.uint8)
                self._group.create_dataset(f"{kind}_offsets", data=offsets)
        record = dict(record, video_id=self.video_id, num_frames=self._count["rgb"],
                      num_flows=self._count["flow"], rgb_crc32=self._crc["rgb"], flow_crc32=self._crc["flow"])
        self._group.attrs["record"] = json.dumps(record, sort_keys=True)
        self._h5.attrs["complete"] = True
        self._h5.flush()
        fd = self._h5.id.get_vfd_handle()
        os.fsync(fd)
        self._h5.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.parts_dir)
        return self.final

    def abort(self) -> None:
        """Drop the temporary file."""
        try:
            self._h5.close()
        except Exception:  # already closed or broken: removing the file is what matters
            pass
        self.tmp.unlink(missing_ok=True)


def write_failure(parts_dir: str | os.PathLike, video_id: str, path: str, reason: str) -> None:
    """Record a failed video in the parts folder (atomically)."""
    atomic_write(Path(parts_dir) / f"{part_key(video_id)}.failed.json",
                 json.dumps({"video_id": video_id, "path": path, "reason": reason}))


def started_marker(parts_dir: str | os.PathLike, video_id: str) -> Path:
    """The file a worker keeps while it works on ``video_id``: left behind, it names the video that crashed."""
    return Path(parts_dir) / f"{part_key(video_id)}.started"


def part_record(parts_dir: str | os.PathLike, video_id: str) -> dict[str, Any] | None:
    """The record of a video's finished part file, or None when there is none or it cannot be read."""
    import h5py

    part = Path(parts_dir) / f"{part_key(video_id)}.h5"
    if not part.exists():
        return None
    try:
        with h5py.File(part, "r") as f:
            return json.loads(_str(f["videos"][video_id].attrs["record"]))
    except Exception:  # a damaged part is not worth a stopped run: the caller redoes the video
        return None


def part_result(parts_dir: str | os.PathLike, video_id: str) -> dict[str, Any] | None:
    """What the parts folder says about a video: {"ok", "frames", "flows", "reason"}, or None if nothing."""
    rec = part_record(parts_dir, video_id)
    if rec is not None:
        return {"ok": True, "frames": rec["num_frames"], "flows": rec["num_flows"], "reason": ""}
    failed = Path(parts_dir) / f"{part_key(video_id)}.failed.json"
    if failed.exists():
        return {"ok": False, "frames": 0, "flows": 0, "reason": json.loads(failed.read_text())["reason"]}
    return None


@contextlib.contextmanager
def writer_lock(store: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive right to write ``store`` (and its parts folder); StoreError if another run has it.

    The lock is an flock on ``<store>.lock`` (data_manifest.atomic.exclusive_lock): the kernel drops it when
    the holder dies, even by SIGKILL. Also the first write of a run, so an --out that cannot be written
    fails here, with the path named.
    """
    store = Path(store)
    path = store.with_name(store.name + ".lock")
    busy = lambda pid: StoreError(f"another flowprep extract (pid {pid}) is writing {store}; wait for it "  # noqa: E731
                                  "to finish or stop it, then re-run (a killed run resumes)")
    unwritable = lambda exc: StoreError(f"cannot write {store}: {exc.strerror or exc} ({exc.filename or path}); "  # noqa: E731
                                        "choose an --out in a folder you can write to")
    with exclusive_lock_or(path, busy, unwritable):
        yield path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of a store, master or part file: kind, complete, config (parsed), shards."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: _str(v) if isinstance(v, (bytes, str)) else v for k, v in f.attrs.items()}
    attrs["config"] = json.loads(attrs.get("config", "{}"))
    return attrs


def _contents(f) -> dict[str, Any]:
    """What an open store file holds besides the data: manifest text, expected ids, failures, records."""
    failures = [json.loads(line) for line in _str(f["failures"][()]).splitlines() if line.strip()]
    return {"manifest": _str(f["manifest"][()]), "expected_ids": [_str(v) for v in f["expected_ids"][()]],
            "failures": failures,
            "records": {vid: json.loads(_str(g.attrs["record"])) for vid, g in f["videos"].items()}}


def read_contents(path: str | os.PathLike) -> dict[str, Any]:
    """_contents of the store file ``path``."""
    import h5py

    with h5py.File(path, "r") as f:
        return _contents(f)


def incompatibilities(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Settings in which two extraction configs differ (the ones that change the stored data)."""
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in COMPAT_KEYS if a.get(k) != b.get(k)]


def assemble(out: str | os.PathLike, part_files: Sequence[Path], previous: str | os.PathLike | None,
             config: dict[str, Any], manifest_text: str, expected_ids: Sequence[str],
             failures: Sequence[dict[str, str]], keep: Iterable[str] | None = None) -> Path:
    """Build the final store ``out`` from the previous store (if any) and new part files, atomically.

    keep: the videos of the previous store to carry over (default all); the others are left out, so a
    video removed from the dataset or redone does not linger.
    """
    import h5py

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with h5py.File(tmp, "w") as dst:
        dst.attrs.update(format=FORMAT, kind="store", complete=False, config=json.dumps(config, sort_keys=True),
                         expected=len(expected_ids))
        dst.create_dataset("manifest", data=manifest_text, dtype=h5py.string_dtype())
        dst.create_dataset("expected_ids", data=list(expected_ids), dtype=h5py.string_dtype())
        dst.create_dataset("failures", data="\n".join(json.dumps(f, sort_keys=True) for f in failures),
                           dtype=h5py.string_dtype())
        videos = dst.create_group("videos")
        keep = None if keep is None else set(keep)
        sources = ([Path(previous)] if previous else []) + list(part_files)
        for src_path in sources:
            with h5py.File(src_path, "r") as src:
                if not src.attrs.get("complete", False):
                    raise StoreError(f"{src_path}: incomplete file; delete it and re-run to redo its videos")
                for vid in src["videos"]:
                    if previous and src_path == Path(previous) and keep is not None and vid not in keep:
                        continue
                    if vid in videos:
                        del videos[vid]  # a newer part replaces an older copy of the same video
                    src.copy(src["videos"][vid], videos, name=vid)
        dst.attrs["complete"] = True
        dst.flush()
        os.fsync(dst.id.get_vfd_handle())
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


_SHARD = re.compile(r"([0-9]+)/([0-9]+)")


def write_master(out: str | os.PathLike, shards: Sequence[str | os.PathLike], partial: bool = False) -> Path:
    """A master file that reads ``shards`` as one store; checks they agree, do not overlap and are all there.

    Refuses (OptionError) an ``out`` that is one of the shards and a shard given twice, before writing
    anything. An incomplete set (shard 2/4 missing) is a StoreError unless ``partial``.
    """
    import h5py

    out = Path(out).absolute()
    if not shards:
        raise OptionError("no shard files given to merge")
    seen_paths: dict[Path, Path] = {}
    for shard in map(Path, shards):
        real = shard.resolve()
        if real == out.resolve() or (out.exists() and shard.exists() and os.path.samefile(out, shard)):
            raise OptionError(f"--out {out} is one of the shard files to merge; writing it would destroy that "
                              "shard: choose another name for the master file, e.g. flows.h5")
        if real in seen_paths:
            raise OptionError(f"shard {shard} is given twice ({seen_paths[real]} and {shard}); give each once")
        seen_paths[real] = shard
    configs, seen, manifests, index = [], {}, [], {}
    for shard in map(Path, shards):
        with _open_store_file(shard) as f:
            kind = _str(f.attrs.get("kind", ""))
            if kind != "store":
                raise StoreError(f"{shard}: not a finished shard store (kind={kind}); "
                                 "merge the shard files themselves, not a master file")
            configs.append(json.loads(_str(f.attrs["config"])))
            manifests.append(_str(f["manifest"][()]))
            diff = incompatibilities(configs[0], configs[-1])
            if diff:
                raise StoreError(f"{shard} was extracted with other settings than {shards[0]}: {'; '.join(diff)}")
            if manifests[-1] != manifests[0]:
                raise StoreError(f"{shard} was extracted from another version of the dataset than {shards[0]} "
                                 "(their manifests differ); re-run the older shards' extraction on the same dataset")
            # a shard written without a number (by hand, or by an old version) is not checked for completeness
            match = _SHARD.fullmatch(str(configs[-1].get("shard", "")))
            if match:
                i, n = int(match.group(1)), int(match.group(2))
                if (i, n) in index:
                    raise StoreError(f"{shard} and {index[(i, n)]} are both shard {i}/{n}; give each shard once")
                index[(i, n)] = shard
            for vid in f["videos"]:
                if vid in seen:
                    raise StoreError(f"video {vid!r} is in both {seen[vid]} and {shard}; shards must not overlap")
                seen[vid] = shard
    counts = {n for _, n in index}
    if len(counts) > 1:
        raise StoreError(f"the shards come from different splits ({', '.join(f'{i}/{n}' for i, n in sorted(index))}"
                         "); merge shards of one `--shard I/N` series")
    n = counts.pop() if counts else 0
    absent = [f"{i}/{n}" for i in range(1, n + 1) if (i, n) not in index]
    if absent and not partial:
        raise StoreError(f"shard {', '.join(absent)} of {n} is not among the files given, so the merged store "
                         "would miss those videos; give every shard, or pass --partial to merge only these")
    rel = [os.path.relpath(Path(s).absolute(), out.parent) for s in shards]
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(format=FORMAT, kind="master", complete=True, config=json.dumps(configs[0], sort_keys=True),
                       shards=json.dumps(rel), missing_shards=json.dumps(absent))
    os.replace(tmp, out)
    return out


def _open_store_file(path: Path):
    import h5py

    if not path.is_file():
        raise StoreError(f"{path}: no such store; run `flowprep extract --out {path}` first")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 flow store ({exc}); re-run the extraction") from exc
    if _str(f.attrs.get("format", "")) != FORMAT:
        f.close()
        raise StoreError(f"{path}: not a flowprep store (format attribute {f.attrs.get('format')!r})")
    if not f.attrs.get("complete", False):
        f.close()
        raise StoreError(f"{path}: the store was not finished; re-run the same `flowprep extract` to complete it")
    return f


class FlowStore:
    """Read access to one store file, a master file over shards, or a list of store files.

    HDF5 handles are opened lazily and per process, so the object can be passed to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike | Iterable[str | os.PathLike]):
        if isinstance(path, (str, os.PathLike)):
            path = Path(path)
            self.missing_shards: list[str] = []  # "I/N" of shards a `merge --partial` left out
            with _open_store_file(path) as f:
                kind = _str(f.attrs.get("kind", ""))
                if kind == "master":
                    self.files = [(path.parent / p).resolve() for p in json.loads(_str(f.attrs["shards"]))]
                    self.missing_shards = json.loads(_str(f.attrs.get("missing_shards", "[]")))
                else:
                    self.files = [path.resolve()]
            self.path = path
        else:
            self.files = [Path(p).resolve() for p in path]
            self.path = self.files[0] if self.files else None
            self.missing_shards = []
        if not self.files:
            raise StoreError("FlowStore needs at least one store file")
        self._where: dict[str, int] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self.failures: list[dict[str, str]] = []
        self.expected_ids: list[str] = []
        configs = []
        for i, file in enumerate(self.files):
            with _open_store_file(file) as f:
                kind = _str(f.attrs.get("kind", ""))
                if kind == "part":
                    raise StoreError(f"{file} is a part file of an unfinished extraction (one video, kept in "
                                     "<out>.parts/); re-run the same `flowprep extract` to assemble the store")
                if kind != "store":
                    raise StoreError(f"{file}: a master file cannot list another master file"
                                     if kind == "master" else f"{file}: not a flow store (kind={kind!r})")
                try:
                    self._read_metadata(f, i, configs)
                except (KeyError, AttributeError, TypeError, ValueError, OSError, RuntimeError) as exc:
                    # h5py reports broken object headers and B-trees as any of these, even as a missing group
                    raise StoreError(f"{file}: the store's HDF5 metadata is damaged ({type(exc).__name__}: {exc}); "
                                     "restore the file from a copy or re-extract it with --overwrite") from exc
            diff = incompatibilities(configs[0], configs[-1])
            if diff:
                raise StoreError(f"{file} was extracted with other settings than {self.files[0]}: {'; '.join(diff)}")
        self.attrs: dict[str, Any] = configs[0]
        self.video_ids: list[str] = sorted(self._where)
        self._manifest = None
        self._pid = None
        self._handles: dict[int, Any] = {}
        # (video_id, kind) -> (dataset, offsets or None): h5py name lookups cost ~0.1 ms each, a read ~0.03 ms
        self._datasets: dict[tuple[str, str], tuple[Any, np.ndarray | None]] = {}

    def _read_metadata(self, f, i: int, configs: list[dict[str, Any]]) -> None:
        """Config, manifest, expected ids, failures and records of the open store file number ``i``."""
        file = self.files[i]
        configs.append(json.loads(_str(f.attrs["config"])))
        contents = _contents(f)
        if i == 0:
            self._manifest_text = contents["manifest"]
        self.expected_ids += contents["expected_ids"]
        self.failures += contents["failures"]
        for vid, record in contents["records"].items():
            if vid in self._where:
                raise StoreError(f"video {vid!r} is in both {self.files[self._where[vid]]} and {file}")
            self._where[vid] = i
            self._records[vid] = record

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "FlowStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles.values():
            try:
                h.close()
            except Exception:  # a handle inherited from another process may not close cleanly
                pass
        self._handles.clear()
        self._datasets.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"], state["_datasets"], state["_pid"] = {}, {}, None
        return state

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked or unpickled in a worker: never reuse the parent's handles
            self._handles, self._datasets, self._pid = {}, {}, os.getpid()

    def _group(self, video_id: str):
        import h5py

        self._check_process()
        try:
            i = self._where[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in the store {self.path}") from None
        if i not in self._handles:
            self._handles[i] = h5py.File(self.files[i], "r", rdcc_nbytes=4 << 20)
        return self._handles[i]["videos"][video_id]

    # -- metadata --------------------------------------------------------------------------------------
    @property
    def manifest(self):
        """The dataset manifest (data_manifest.Manifest) the store was extracted from."""
        if self._manifest is None:
            from data_manifest import Manifest

            self._manifest = Manifest.from_text(self._manifest_text, source=f"{self.path}:/manifest")
        return self._manifest

    def record(self, video_id: str) -> dict[str, Any]:
        """Per-video extraction record: num_frames, num_flows, fps, source size, clipped_fraction, crc32..."""
        if video_id not in self._records:
            raise KeyError(f"video {video_id!r} is not in the store {self.path}")
        return self._records[video_id]

    def num_frames(self, video_id: str) -> int:
        """Number of RGB frames; the video has num_frames - 1 flow fields."""
        return int(self.record(video_id)["num_frames"])

    def num_flows(self, video_id: str) -> int:
        return int(self.record(video_id)["num_flows"])

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._where

    # -- data ------------------------------------------------------------------------------------------
    def _indices(self, video_id: str, indices, count: int, kind: str) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if idx.ndim != 1:
            raise IndexError(f"{kind} indices must be a 1-D sequence, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= count):
            raise IndexError(f"{kind} index out of range for {video_id!r}: valid 0..{count - 1}, "
                             f"got {idx.min()}..{idx.max()}")
        return idx

    def _dataset(self, video_id: str, kind: str):
        """(dataset, offsets): the (n, H, W, c) array for codec raw with offsets None, else the JPEG bytes."""
        key = (video_id, kind)
        self._check_process()
        if key not in self._datasets:
            if len(self._datasets) >= DATASET_CACHE:  # bounded: each open dataset holds an HDF5 object id
                del self._datasets[next(iter(self._datasets))]
            group = self._group(video_id)
            if self.attrs["codec"] == "raw":
                self._datasets[key] = (group[kind], None)
            else:
                self._datasets[key] = (group[f"{kind}_jpeg"], group[f"{kind}_offsets"][()])
        return self._datasets[key]

    def _read(self, video_id: str, kind: str, idx: np.ndarray, planes: bool = False) -> np.ndarray:
        """(n, H, W, c) uint8, or with ``planes`` (flow only) (n, 2, H, W)."""
        import cv2

        blob_ds, offsets = self._dataset(video_id, kind)
        rec = self._records[video_id]
        h, w = int(rec["height"]), int(rec["width"])
        c = 3 if kind == "rgb" else 2
        if not idx.size:  # the same empty shape for both codecs
            return np.empty((0, c, h, w) if planes else (0, h, w, c), np.uint8)
        if offsets is None:  # codec raw
            uniq, inverse = np.unique(idx, return_inverse=True)
            data = blob_ds[uniq][inverse]
            return np.ascontiguousarray(data.transpose(0, 3, 1, 2)) if planes else data
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= 2 * len(idx):  # one read of the covering byte range beats many small reads
            base = int(offsets[lo])
            blob = blob_ds[base:int(offsets[hi])]
            spans = [(int(offsets[i]) - base, int(offsets[i + 1]) - base) for i in idx]
            pieces = [blob[a:b] for a, b in spans]
        else:
            pieces = [blob_ds[int(offsets[i]):int(offsets[i + 1])] for i in idx]
        out = np.empty((len(idx), c, h, w) if planes else (len(idx), h, w, c), np.uint8)
        for k, (i, piece) in enumerate(zip(idx, pieces)):
            img = cv2.imdecode(piece, cv2.IMREAD_COLOR if kind == "rgb" else cv2.IMREAD_GRAYSCALE)
            if img is None or img.shape[:2] != ((h, w) if kind == "rgb" else (h, 2 * w)):
                raise StoreError(f"{self.files[self._where[video_id]]}: {kind} image {i} of {video_id!r} "
                                 "does not decode; run `flowprep verify` and re-extract that video")
            if kind == "rgb":
                cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[k])
            else:  # stored side by side (H, 2W): x | y; as planes, whole rows are copied (no interleaving)
                field = out[k] if planes else out[k].transpose(2, 0, 1)  # (2, H, W) view
                field[0] = img[:, :w]
                field[1] = img[:, w:]
        return out

    def read_rgb(self, video_id: str, indices) -> np.ndarray:
        """RGB frames at ``indices``: (n, H, W, 3) uint8."""
        idx = self._indices(video_id, indices, self.num_frames(video_id), "frame")
        return self._read(video_id, "rgb", idx)

    def read_flow(self, video_id: str, indices) -> np.ndarray:
        """Quantised flow fields at ``indices``: (n, H, W, 2) uint8, x then y."""
        idx = self._indices(video_id, indices, self.num_flows(video_id), "flow")
        return self._read(video_id, "flow", idx)

    def read_flow_planes(self, video_id: str, indices) -> np.ndarray:
        """The fields of read_flow as planes: (n, 2, H, W) uint8, [:, 0] = x, [:, 1] = y.

        Cheaper than read_flow with the jpeg codec (the stored x | y image is copied row by row instead of
        interleaved pixel by pixel), for readers that want channels first, as a network does.
        """
        idx = self._indices(video_id, indices, self.num_flows(video_id), "flow")
        return self._read(video_id, "flow", idx, planes=True)

    def raw_bytes(self, video_id: str, kind: str) -> np.ndarray:
        """The stored bytes of one video's ``kind`` ("rgb" or "flow") exactly as checksummed at write time."""
        group = self._group(video_id)
        if self.attrs["codec"] == "raw":
            return group[kind][()].reshape(-1)
        return group[f"{kind}_jpeg"][()]
