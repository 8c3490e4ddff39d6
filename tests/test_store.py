"""The store format directly: part files, assembly, reading, shards, atomicity, checksums."""
import json
import os

import h5py
import numpy as np
import pytest

from flowprep import FlowStore, StoreError
from flowprep.errors import OptionError
from flowprep.store.parts import Parts
from flowprep.store.writer import assemble, write_master, writer_lock
from flowprep.outcomes import VideoTask
from flowprep.work import VideoEncoder

CONFIG = {"algo": "tvl1", "params": {}, "bound": 20.0, "rounding": "r", "codec": "jpeg", "jpeg_quality": 95,
          "size": "32x24", "interpolation": "INTER_LINEAR", "implementation": "test"}


def _frames(n, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:24, 0:32]
    # smooth images (no wrap-around edges), different per frame, so lossy JPEG stays close
    rgb = [np.stack([xx * 6 + k * 8, yy * 9, np.full_like(xx, 40 + 10 * seed)], -1).astype(np.uint8)
           for k in range(n)]
    flow = [np.clip(128 + 20 * np.sin(xx / 5 + k)[..., None] * [1, -1] + rng.normal(0, 1, (24, 32, 2)), 0, 255)
            .astype(np.uint8) for k in range(n - 1)]
    return rgb, flow


def _encoded(vid, n, seed, codec="jpeg"):
    """An EncodedVideo of n synthetic frames, and the frames and fields it holds."""
    rgb, flow = _frames(n, seed)
    encoder = VideoEncoder(VideoTask(vid, f"C/{vid}.avi", f"C/{vid}.avi", "C", 0), codec, 95)
    for f in rgb:
        encoder.add_rgb(f)
    for f in flow:
        encoder.add_flow(f, 0)
    return encoder.finish({"width": 32, "height": 24}), rgb, flow


def _write_part(parts, vid, n, seed, codec="jpeg"):
    """Write video ``vid`` as a part file into the folder ``parts``; returns its frames and fields."""
    video, rgb, flow = _encoded(vid, n, seed, codec)
    writer = Parts(parts / "s.h5", dict(CONFIG, codec=codec))
    writer.folder = parts
    writer.write(video)
    return rgb, flow


@pytest.fixture
def manifest_text():
    from data_manifest import Manifest, VideoRecord

    recs = [VideoRecord(video_id=v, path=f"C/{v}.avi", class_name="C", label=0, group=None, splits=())
            for v in ("a", "b", "c")]
    return Manifest(dataset="folder", classes=["C"], records=recs).to_text()


@pytest.mark.parametrize("codec", ["jpeg", "jpeg-xy", "raw"])
def test_write_assemble_read(tmp_path, manifest_text, codec):
    parts = tmp_path / "parts"
    parts.mkdir()
    rgb_a, flow_a = _write_part(parts, "a", 6, 1, codec)
    _write_part(parts, "b!(x)&", 3, 2, codec)
    out = assemble(tmp_path / "s.h5", sorted(parts.glob("*.h5")), None, dict(CONFIG, codec=codec), manifest_text,
                   ["a", "b!(x)&"], [{"video_id": "c", "path": "C/c.avi", "reason": "broken"}])
    with FlowStore(out) as store:
        assert store.video_ids == ["a", "b!(x)&"]
        assert store.num_frames("a") == 6 and store.num_flows("a") == 5
        assert store.failures[0]["reason"] == "broken"
        rgb = store.read_rgb("a", [4, 0, 4])
        flow = store.read_flow("a", np.arange(5))
        assert rgb.shape == (3, 24, 32, 3) and flow.shape == (5, 24, 32, 2) and flow.dtype == np.uint8
        # raw is lossless; JPEG q95 (4:2:0 chroma) stays close on average, gray flow closer still
        rgb_tol, flow_tol = (0, 0) if codec == "raw" else (3, 4)
        assert np.abs(rgb[1].astype(int) - rgb_a[0]).mean() <= rgb_tol
        assert np.abs(rgb[0].astype(int) - rgb_a[4]).mean() <= rgb_tol
        assert np.abs(flow.astype(int) - np.stack(flow_a)).max() <= flow_tol
        assert np.abs(rgb[1].astype(int) - rgb_a[4]).mean() > 5  # frames differ: the check can fail
        assert np.array_equal(rgb[0], rgb[2])
        with pytest.raises(IndexError, match="valid 0..4"):
            store.read_flow("a", [5])
        with pytest.raises(IndexError):
            store.read_rgb("a", [-1])
        with pytest.raises(KeyError, match="not in the store"):
            store.read_rgb("zzz", [0])
        assert store.manifest.classes == ["C"]
        # no indices: an empty array of the right shape with either codec
        assert store.read_flow("a", []).shape == (0, 24, 32, 2) and store.read_rgb("a", []).shape == (0, 24, 32, 3)
        assert store.read_flow("a", []).dtype == np.uint8
        # planes: the same fields, channels first, in the order asked
        planes = store.read_flow_planes("a", [3, 0, 3])
        assert planes.shape == (3, 2, 24, 32) and planes.flags.c_contiguous
        assert np.array_equal(planes, flow[[3, 0, 3]].transpose(0, 3, 1, 2))
        assert store.read_flow_planes("a", []).shape == (0, 2, 24, 32)
        with pytest.raises(IndexError, match="valid 0..4"):
            store.read_flow_planes("a", [5])


def test_a_part_write_that_fails_leaves_nothing(tmp_path, monkeypatch):
    import flowprep.store.parts

    def broken(group, video, codec):
        group.create_dataset("rgb_jpeg", data=np.zeros(10, np.uint8))  # something was written...
        raise OSError(5, "Input/output error")  # ...when the disk failed

    monkeypatch.setattr(flowprep.store.parts, "write_video", broken)
    with pytest.raises(StoreError, match=r"writing .*\.tmp failed .*Input/output error"):
        _write_part(tmp_path, "a", 3, 0)
    assert list(tmp_path.iterdir()) == []  # no part, no temporary file


def test_a_full_disk_in_a_part_write_is_named_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    import flowprep.store.parts
    from flowprep.store.parts import DiskFull

    monkeypatch.setattr(flowprep.store.parts, "finish_file", lambda f, tmp, final: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(DiskFull, match="no space left on device writing .*\\.tmp; free space"):
        _write_part(tmp_path, "a", 3, 0)
    assert list(tmp_path.iterdir()) == []


def test_part_attributes_do_not_grow_with_the_run(tmp_path):
    """A part holds the store's settings and its own video's record only, whatever the run's size."""
    _write_part(tmp_path, "a", 3, 0)
    (part,) = tmp_path.glob("*.h5")
    with h5py.File(part, "r") as f:
        assert json.loads(f.attrs["config"]) == CONFIG and list(f["videos"]) == ["a"]
        record = json.loads(f["videos/a"].attrs["record"])
        size = sum(len(str(v)) for v in f.attrs.values()) + len(f["videos/a"].attrs["record"])
    assert record["path"] == "C/a.avi" and size < 2000


def test_unfinished_store_is_refused(tmp_path):
    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(format="flowprep-store/1", kind="store", complete=False, config=json.dumps(CONFIG))
    with pytest.raises(StoreError, match="not finished"):
        FlowStore(path)
    (tmp_path / "junk.h5").write_bytes(b"\x00" * 100)
    with pytest.raises(StoreError, match="not a readable HDF5"):
        FlowStore(tmp_path / "junk.h5")
    with pytest.raises(StoreError, match="no such store"):
        FlowStore(tmp_path / "missing.h5")


def test_shards_read_as_one_store(tmp_path, manifest_text):
    shards = _two_shards(tmp_path, manifest_text)
    master = write_master(tmp_path / "all.h5", shards)
    with FlowStore(master) as store:
        assert store.video_ids == ["a", "b", "c"]
        assert store.read_flow("c", [3]).shape == (1, 24, 32, 2)
    with FlowStore(shards) as store:
        assert len(store) == 3
    with pytest.raises(OptionError, match="given twice"):
        write_master(tmp_path / "dup.h5", [shards[0], shards[0]])
    with pytest.raises(OptionError, match="given twice"):  # the same file under another name
        write_master(tmp_path / "dup.h5", [shards[0], tmp_path / "." / shards[0].name])
    assert not (tmp_path / "dup.h5").exists()


def _two_shards(tmp_path, manifest_text):
    """Shards 1/2 (video a) and 2/2 (videos b, c), as `extract --shard` records them."""
    shards = []
    for i, vids in enumerate([["a"], ["b", "c"]]):
        parts = tmp_path / f"p{i}"
        parts.mkdir()
        for j, v in enumerate(vids):
            _write_part(parts, v, 4 + j, j)
        shards.append(assemble(tmp_path / f"flows-{i + 1}of2.h5", sorted(parts.glob("*.h5")), None,
                               dict(CONFIG, shard=f"{i + 1}/2"), manifest_text, vids, []))
    return shards


def test_merge_never_overwrites_a_shard(tmp_path, manifest_text):
    shards = _two_shards(tmp_path, manifest_text)
    before = shards[0].read_bytes()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # as typed: merge --out flows-1of2.h5 flows-1of2.h5 flows-2of2.h5
    try:
        with pytest.raises(OptionError, match="one of the shard files") as info:
            write_master("flows-1of2.h5", ["flows-1of2.h5", "flows-2of2.h5"])
    finally:
        os.chdir(cwd)
    assert "flows-1of2.h5" in str(info.value)
    assert shards[0].read_bytes() == before and not (tmp_path / "flows-1of2.h5.tmp").exists()
    with FlowStore(shards[0]) as store:
        assert store.video_ids == ["a"]


def test_merge_refuses_an_incomplete_shard_set_unless_partial(tmp_path, manifest_text):
    shards = _two_shards(tmp_path, manifest_text)
    with pytest.raises(StoreError, match="shard 2/2 of 2 is not among the files given.*--partial"):
        write_master(tmp_path / "half.h5", shards[:1])
    assert not (tmp_path / "half.h5").exists()
    with FlowStore(write_master(tmp_path / "half.h5", shards[:1], partial=True)) as store:
        assert store.video_ids == ["a"]
    with pytest.raises(StoreError, match="both shard 1/2"):
        import shutil

        write_master(tmp_path / "x.h5", [shards[0], shutil.copy(shards[0], tmp_path / "copy.h5"), shards[1]])


def test_part_file_and_damaged_metadata_are_named(tmp_path, manifest_text):
    parts = tmp_path / "p"
    parts.mkdir()
    _write_part(parts, "a", 3, 0)
    (part,) = parts.glob("*.h5")
    with pytest.raises(StoreError, match="part file of an unfinished extraction"):
        FlowStore(part)
    out = assemble(tmp_path / "s.h5", [part], None, CONFIG, manifest_text, ["a"], [])
    with h5py.File(out, "r+") as f:
        # what zeroed bytes in the QA's store did: a video entry that resolves to nothing
        f["videos/b"] = h5py.SoftLink("/nowhere")
    with pytest.raises(StoreError, match="metadata is damaged") as info:
        FlowStore(out)
    assert str(out) in str(info.value) and "--overwrite" in str(info.value)
    with h5py.File(out, "r+") as f:
        del f["videos/b"]
        f["videos/a"].attrs["record"] = "{garbage"  # a record that is no longer JSON
    with pytest.raises(StoreError, match="video 'a': its record is not valid JSON"):
        FlowStore(out)


def test_writer_lock_refuses_a_second_writer(tmp_path):
    store = tmp_path / "sub" / "flows.h5"
    with writer_lock(store) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(StoreError, match=f"another flowprep extract \\(pid {os.getpid()}\\) is writing"):
            with writer_lock(store):
                pass
    assert not lock.exists()
    with writer_lock(store):  # released: the next run gets it
        pass
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write .*file/flows.h5"):
        with writer_lock(blocker / "flows.h5"):
            pass


def test_store_can_be_pickled_to_workers(tmp_path, manifest_text):
    import pickle

    parts = tmp_path / "p"
    parts.mkdir()
    _write_part(parts, "a", 4, 0)
    out = assemble(tmp_path / "s.h5", list(parts.glob("*.h5")), None, CONFIG, manifest_text, ["a"], [])
    store = FlowStore(out)
    first = store.read_flow("a", [0])
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone.read_flow("a", [0]), first)
    pid = os.fork()
    if pid == 0:  # child: the inherited handle must not be reused
        ok = np.array_equal(store.read_flow("a", [0]), first) and store._pid == os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_jpeg_xy_keeps_each_plane_as_its_own_gray_jpeg(tmp_path, manifest_text):
    """Codec jpeg-xy: two JPEGs per field (x then y), each with its CRC-32; the reader decodes them into the
    same arrays as a plane-by-plane decode of those JPEGs, and hands the stored bytes out unchanged."""
    import cv2

    parts = tmp_path / "parts"
    parts.mkdir()
    video, _, flow = _encoded("a", 5, 1, "jpeg-xy")
    assert len(video.flow) == 8 and video.flow_crcs.shape == (8,) and video.record["num_flows"] == 4
    writer = Parts(parts / "s.h5", dict(CONFIG, codec="jpeg-xy"))
    writer.folder = parts
    writer.write(video)
    out = assemble(tmp_path / "s.h5", list(parts.glob("*.h5")), None, dict(CONFIG, codec="jpeg-xy"),
                   manifest_text, ["a"], [])
    with h5py.File(out, "r") as f:
        assert f["videos/a/flow_offsets"].shape == (9,) and f["videos/a/flow_crcs"].shape == (8,)
    with FlowStore(out) as store:
        stored = store.read_stored("a", "flow", [2, 0])
        assert [len(s) for s in stored] == [2, 2]
        x, y = (cv2.imdecode(b, cv2.IMREAD_GRAYSCALE) for b in stored[0])
        assert x.shape == (24, 32) and np.array_equal(store.read_flow("a", [2])[0], np.stack([x, y], -1))
        assert np.array_equal(stored[1][1], video.flow[1])  # field 0's y: the bytes written, unchanged
        assert np.array_equal(store.read_flow_planes("a", [2])[0], np.stack([x, y]))
        assert np.abs(store.read_flow("a", range(4)).astype(int) - np.stack(flow)).max() <= 4
        (rgb,) = store.read_stored("a", "rgb", [3])[0]
        assert np.array_equal(rgb, video.rgb[3])
        assert store.read_stored("a", "flow", []) == []
        with pytest.raises(IndexError, match="valid 0..3"):
            store.read_stored("a", "flow", [4])


@pytest.mark.parametrize("plane", [0, 1])
def test_jpeg_xy_damage_in_either_plane_names_the_field(tmp_path, manifest_text, plane):
    from flowprep.inspection import verify

    parts = tmp_path / "parts"
    parts.mkdir()
    _write_part(parts, "a", 5, 1, "jpeg-xy")
    out = assemble(tmp_path / "s.h5", list(parts.glob("*.h5")), None, dict(CONFIG, codec="jpeg-xy"),
                   manifest_text, ["a"], [])
    with h5py.File(out, "r+") as f:
        blob, offsets = f["videos/a/flow_jpeg"], f["videos/a/flow_offsets"][()]
        image = 2 * 2 + plane  # field 2, x or y
        at = int(offsets[image] + (offsets[image + 1] - offsets[image]) // 2)
        blob[at] = blob[at] ^ 0x10
    with FlowStore(out) as store:
        assert store.read_flow("a", [0, 1, 3]).shape[0] == 3
        with pytest.raises(StoreError, match="flow image 2 of 'a' does not match its checksum"):
            store.read_flow_planes("a", [1, 2])
        with pytest.raises(StoreError, match="flow image 2 of 'a'"):
            store.read_stored("a", "flow", [2])
        assert store.damaged_images("a", "flow") == [2] and store.damaged_images("a", "rgb") == []
    problems = verify(out)
    redo = "re-extract that video (`flowprep extract` made this store)"  # the fix, with the command that made it
    assert f"a: flow image 2 does not match its checksum; {redo}" in problems
    assert f"a: flow checksum mismatch (stored data damaged); {redo}" in problems


def test_raw_stores_have_no_stored_jpegs(tmp_path, manifest_text):
    parts = tmp_path / "parts"
    parts.mkdir()
    _write_part(parts, "a", 3, 1, "raw")
    out = assemble(tmp_path / "s.h5", list(parts.glob("*.h5")), None, dict(CONFIG, codec="raw"), manifest_text,
                   ["a"], [])
    with FlowStore(out) as store:
        with pytest.raises(ValueError, match="codec raw stores pixels"):
            store.read_stored("a", "rgb", [0])
