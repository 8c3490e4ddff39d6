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

A master file (``kind`` = "master") lists shard files (paths relative to it) to be read as one store.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data_manifest.atomic import atomic_write, fsync_dir
from flowprep.errors import StoreError

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
            image = array if kind == "rgb" else np.concatenate([array[..., 0], array[..., 1]], axis=1)
            if kind == "rgb":
                image = image[..., ::-1]  # OpenCV encodes BGR
            data = _jpeg_encode(np.ascontiguousarray(image), self.quality)
            self._bytes[kind].append(data)
        else:
            data = np.ascontiguousarray(array)
            if kind not in self._group:
                self._group.create_dataset(kind, shape=(0, *data.shape), maxshape=(None, *data.shape),
                                           dtype=np.uint8, chunks=(1, *data.shape))
            ds = self._group[kind]
            ds.resize(self._count[kind] + 1, axis=0)
            ds[self._count[kind]] = data
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


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The extraction config recorded in a store or part file."""
    import h5py

    with h5py.File(path, "r") as f:
        return json.loads(_str(f.attrs["config"]))


def incompatibilities(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Settings in which two extraction configs differ (the ones that change the stored data)."""
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in COMPAT_KEYS if a.get(k) != b.get(k)]


def assemble(out: str | os.PathLike, part_files: Sequence[Path], previous: str | os.PathLike | None,
             config: dict[str, Any], manifest_text: str, expected_ids: Sequence[str],
             failures: Sequence[dict[str, str]]) -> Path:
    """Build the final store ``out`` from the previous store (if any) and new part files, atomically."""
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
        sources = ([Path(previous)] if previous else []) + list(part_files)
        for src_path in sources:
            with h5py.File(src_path, "r") as src:
                if not src.attrs.get("complete", False):
                    raise StoreError(f"{src_path}: incomplete file; delete it and re-run to redo its videos")
                for vid in src["videos"]:
                    if vid in videos:
                        del videos[vid]  # a newer part replaces an older copy of the same video
                    src.copy(src["videos"][vid], videos, name=vid)
        dst.attrs["complete"] = True
        dst.flush()
        os.fsync(dst.id.get_vfd_handle())
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def write_master(out: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> Path:
    """A master file that reads ``shards`` as one store; checks they agree and do not overlap."""
    import h5py

    out = Path(out).absolute()
    if not shards:
        raise StoreError("no shard files given to merge")
    configs, seen = [], {}
    for shard in shards:
        shard = Path(shard)
        with _open_store_file(shard) as f:
            if _str(f.attrs.get("kind", "")) != "store":
                raise StoreError(f"{shard}: not a finished shard store (kind={_str(f.attrs.get('kind'))})")
            configs.append(json.loads(_str(f.attrs["config"])))
            for vid in f["videos"]:
                if vid in seen:
                    raise StoreError(f"video {vid!r} is in both {seen[vid]} and {shard}; shards must not overlap")
                seen[vid] = shard
        diff = incompatibilities(configs[0], configs[-1])
        if diff:
            raise StoreError(f"{shard} was extracted with other settings than {shards[0]}: {'; '.join(diff)}")
    rel = [os.path.relpath(Path(s).absolute(), out.parent) for s in shards]
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(format=FORMAT, kind="master", complete=True, config=json.dumps(configs[0], sort_keys=True),
                       shards=json.dumps(rel))
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
            with _open_store_file(path) as f:
                if _str(f.attrs["kind"]) == "master":
                    self.files = [(path.parent / p).resolve() for p in json.loads(_str(f.attrs["shards"]))]
                else:
                    self.files = [path.resolve()]
            self.path = path
        else:
            self.files = [Path(p).resolve() for p in path]
            self.path = self.files[0] if self.files else None
        if not self.files:
            raise StoreError("FlowStore needs at least one store file")
        self._where: dict[str, int] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self.failures: list[dict[str, str]] = []
        self.expected_ids: list[str] = []
        configs = []
        for i, file in enumerate(self.files):
            with _open_store_file(file) as f:
                if _str(f.attrs["kind"]) != "store":
                    raise StoreError(f"{file}: a master file cannot list another master file")
                configs.append(json.loads(_str(f.attrs["config"])))
                if i == 0:
                    self._manifest_text = _str(f["manifest"][()])
                self.expected_ids += [_str(v) for v in f["expected_ids"][()]]
                text = _str(f["failures"][()])
                self.failures += [json.loads(line) for line in text.splitlines() if line.strip()]
                for vid, group in f["videos"].items():
                    if vid in self._where:
                        raise StoreError(f"video {vid!r} is in both {self.files[self._where[vid]]} and {file}")
                    self._where[vid] = i
                    self._records[vid] = json.loads(_str(group.attrs["record"]))
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

    def _read(self, video_id: str, kind: str, idx: np.ndarray) -> np.ndarray:
        import cv2

        blob_ds, offsets = self._dataset(video_id, kind)
        if offsets is None:  # codec raw
            uniq, inverse = np.unique(idx, return_inverse=True)
            return blob_ds[uniq][inverse]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= 2 * len(idx):  # one read of the covering byte range beats many small reads
            base = int(offsets[lo])
            blob = blob_ds[base:int(offsets[hi])]
            spans = [(int(offsets[i]) - base, int(offsets[i + 1]) - base) for i in idx]
            pieces = [blob[a:b] for a, b in spans]
        else:
            pieces = [blob_ds[int(offsets[i]):int(offsets[i + 1])] for i in idx]
        rec = self._records[video_id]
        h, w = int(rec["height"]), int(rec["width"])
        out = np.empty((len(idx), h, w, 3 if kind == "rgb" else 2), np.uint8)
        for k, (i, piece) in enumerate(zip(idx, pieces)):
            img = cv2.imdecode(piece, cv2.IMREAD_COLOR if kind == "rgb" else cv2.IMREAD_GRAYSCALE)
            if img is None or img.shape[:2] != ((h, w) if kind == "rgb" else (h, 2 * w)):
                raise StoreError(f"{self.files[self._where[video_id]]}: {kind} image {i} of {video_id!r} "
                                 "does not decode; run `flowprep verify` and re-extract that video")
            if kind == "rgb":
                cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[k])
            else:  # stored side by side (H, 2W): x | y
                out[k, :, :, 0] = img[:, :w]
                out[k, :, :, 1] = img[:, w:]
        return out

    def read_rgb(self, video_id: str, indices) -> np.ndarray:
        """RGB frames at ``indices``: (n, H, W, 3) uint8."""
        idx = self._indices(video_id, indices, self.num_frames(video_id), "frame")
        return self._read(video_id, "rgb", idx)

    def read_flow(self, video_id: str, indices) -> np.ndarray:
        """Quantised flow fields at ``indices``: (n, H, W, 2) uint8, x then y."""
        idx = self._indices(video_id, indices, self.num_flows(video_id), "flow")
        return self._read(video_id, "flow", idx)

    def raw_bytes(self, video_id: str, kind: str) -> np.ndarray:
        """The stored bytes of one video's ``kind`` ("rgb" or "flow") exactly as checksummed at write time."""
        group = self._group(video_id)
        if self.attrs["codec"] == "raw":
            return group[kind][()].reshape(-1)
        return group[f"{kind}_jpeg"][()]
