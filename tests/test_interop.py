"""`flowprep import` and `flowprep export`: trees of each tool's layout with their quirks (1- vs 0-based names,
N vs N-1 images, no class folders, the HandStandPushups spelling, CRLF split files), bad input, resume,
codecs, and exports read back by mmaction2's rules."""
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from flowprep import FlowStore
from flowprep.cli import main as cli
from flowprep.interop.jpegs import jpeg_shape
from flowprep.interop.layouts import LAYOUTS, match_files
from flowprep.errors import VideoError
from tests.fake_datasets import make_fake_ucf101
from tests.fake_layouts import H, W, decoded, flow, frame, jpeg, write_tree

FRAMES = 6  # video frames per fake video (N)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    """The split files of a small fake UCF101 (CRLF, HandstandPushups holding v_HandStandPushups_ files) and its
    videos: id -> (class folder, frames); one group per split's test third, 6 videos."""
    tree = make_fake_ucf101(tmp_path_factory.mktemp("ucf"), groups=3, clips=1)
    videos = {rel.split("/")[1][:-4]: (rel.split("/")[0], FRAMES + i % 2)
              for i, rel in enumerate(sorted(tree.expected))}
    return tree, videos


def _import(tree, out, *extra):
    return run_cli("import", *tree.args(), "--out", out, "--jobs", 1, "--no-progress", *extra)


# -- the layouts, one by one --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,class_folders", [("feichtenhofer", False), ("tsn", False), ("tsn", True),
                                                  ("denseflow", True), ("mmaction2", True), ("mmaction2", False)])
def test_each_layout_imports_exactly_the_files_it_came_from(tmp_path, ucf, layout, class_folders):
    splits, videos = ucf
    tree = write_tree(tmp_path / "t", layout, videos, class_folders)
    out = tmp_path / "flows.h5"
    result = _import(tree, out, "--splits", splits.splits_dir)
    assert result.exit_code == 0, result.output
    assert f"expected {len(videos)}, done {len(videos)}" in result.output
    first = 1 if layout == "tsn" else 0  # dense_flow never writes video frame 0
    with FlowStore(out) as store:
        assert store.video_ids == sorted(videos)
        assert store.manifest.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
        assert store.manifest.dataset == "ucf101" and store.manifest.num_splits == 3
        rec = store.record("v_HandStandPushups_g02_c01")
        assert (rec["class_name"], rec["label"]) == ("HandstandPushups", 1)  # the class, not the file's spelling
        assert rec["path"] == "HandstandPushups/v_HandStandPushups_g02_c01.avi"
        cfg = store.attrs
        assert cfg["algo"] == "imported" and cfg["implementation"] == f"imported-{layout}" and cfg["bound"] == 20.0
        assert cfg["imported"]["layout"] == layout and cfg["codec"] == "jpeg-xy"
        assert "--bound" in cfg["imported"]["bound"] and cfg["imported"]["origin"].startswith("imported")
        for vid, (_, n) in videos.items():
            rec = store.record(vid)
            assert rec["num_frames"] == n - first and rec["num_flows"] == n - first - 1
            assert rec["first_frame"] == first and (rec["width"], rec["height"]) == (W, H)
            rgb = store.read_rgb(vid, range(n - first))
            fields = store.read_flow(vid, range(n - first - 1))
            # store frame j is video frame j + first, store flow j runs from it to the next: each compared with
            # the very file the tool wrote for it, decoded
            for j in range(n - first):
                assert np.array_equal(rgb[j], decoded(_rgb_file(tree, vid, j + first))), (vid, j)
            for j in range(n - first - 1):
                fx, fy = _flow_files(tree, vid, j + first)
                assert np.array_equal(fields[j, ..., 0], decoded(fx, gray=True)), (vid, j)
                assert np.array_equal(fields[j, ..., 1], decoded(fy, gray=True)), (vid, j)
            # and the content is the video's: frame levels and field levels of the right index (JPEG-close)
            assert abs(int(rgb[0, 0, 0, 0]) - frame(first)[0, 0, 0]) <= 3
            assert abs(fields[0, ..., 0].mean() - flow(first)[..., 0].mean()) < 2
    assert run_cli("verify", out, "--no-progress").exit_code == 0


def _rgb_file(tree, vid, i):
    """The file the tool wrote for video frame i."""
    d = tree.folder(vid)
    return {"feichtenhofer": d / f"frame{i + 1:06d}.jpg", "tsn": d / f"img_{i:05d}.jpg",
            "denseflow": d / f"img_{i:05d}.jpg", "mmaction2": d / f"img_{i + 1:05d}.jpg"}[tree.layout]


def _flow_files(tree, vid, i):
    """The (x, y) files the tool wrote for the field from video frame i to i + 1."""
    if tree.layout == "feichtenhofer":
        return (tree.flow / "u" / vid / f"frame{i + 1:06d}.jpg", tree.flow / "v" / vid / f"frame{i + 1:06d}.jpg")
    d = tree.folder(vid)
    k = i if tree.layout == "denseflow" else i + 1
    return d / f"flow_x_{k:05d}.jpg", d / f"flow_y_{k:05d}.jpg"


def test_tsn_frame_0_is_recorded_not_shifted(tmp_path, ucf):
    """dense_flow's img_00001 is video frame 1 and its flow_x_00001 runs from the never-written frame 0: the
    store starts at video frame 1, leaves that field out and says so."""
    _, videos = ucf
    vid = "v_YoYo_g01_c01"
    tree = write_tree(tmp_path / "t", "tsn", {vid: videos[vid]})
    out = tmp_path / "f.h5"
    assert _import(tree, out).exit_code == 0
    with FlowStore(out) as store:
        rec = store.record(vid)
        assert rec["first_frame"] == 1 and rec["rgb_files"] == "img_00001.jpg..img_00005.jpg"
        assert rec["flow_files"] == "flow_x_00002.jpg..flow_x_00005.jpg"
        assert rec["dropped_flows"] == ["flow_x_00001.jpg, flow_y_00001.jpg: from video frame 0 to 1, which starts "
                                        "at no stored frame"]
        assert "store frame 0 is video frame 1" in store.attrs["imported"]["mapping"]
        # flow 0 of the store lies between store frames 0 and 1 (video frames 1 and 2): dense_flow's pair 2
        assert np.array_equal(store.read_flow(vid, [0])[0, ..., 0],
                              decoded(tree.folder(vid) / "flow_x_00002.jpg", gray=True))


def test_feichtenhofer_without_split_files_takes_the_class_from_the_ucf_name(tmp_path, ucf):
    _, videos = ucf
    tree = write_tree(tmp_path / "t", "feichtenhofer", videos)
    (tree.frames / "stray_clip").mkdir()  # no class to give it: refused, not left out without a word
    out = tmp_path / "f.h5"
    refused = _import(tree, out)
    assert refused.exit_code == 1 and "have no class" in refused.output and "stray_clip" in refused.output
    (tree.frames / "stray_clip").rmdir()
    result = _import(tree, out)
    assert result.exit_code == 0, result.output
    with FlowStore(out) as store:
        m = store.manifest
        assert m.dataset == "folder" and m.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
        assert m.by_id("v_HandStandPushups_g01_c01").path == "HandstandPushups/v_HandStandPushups_g01_c01"
        assert m.split_method and m.num_splits == 3  # no split files: the split extract would make (same rule)
        for k in (1, 2, 3):  # every group (the _gNN_ token) on one side
            train, test = m.ids(k, "train"), m.ids(k, "test")
            assert sorted(train + test) == sorted(videos) and test
            assert not {m.by_id(v).group for v in train} & {m.by_id(v).group for v in test}
    info = run_cli("info", out)
    assert info.exit_code == 0 and "imported" in info.output and "feichtenhofer" in info.output
    # export writes that split's lists, train and test of each split, every video once per split
    assert run_cli("export", "--layout", "mmaction2", out, tmp_path / "x", "--no-progress").exit_code == 0
    lines = [line for part in ("train", "val") for line in
             (tmp_path / "x" / f"folder_{part}_split_1_rawframes.txt").read_text().splitlines()]
    assert sorted(lines) == sorted(f"{c}/{v} {n} {['ApplyEyeMakeup', 'HandstandPushups', 'YoYo'].index(c)}"
                                   for v, (c, n) in videos.items())


def test_a_store_without_a_split_is_one_line_for_the_trainer_and_a_rerun_adds_the_split(tmp_path, ucf,
                                                                                          monkeypatch):
    """A store written before import made a split (none without split files): `trainer run` says so in one
    line (exit 1, not a usage error) and names the fix, and re-running the import adds the split."""
    import data_manifest.grouping
    from trainer.cli import main as trainer_main

    _, videos = ucf
    tree = write_tree(tmp_path / "t", "feichtenhofer", videos)
    out = tmp_path / "f.h5"
    with monkeypatch.context() as m:
        m.setattr(data_manifest.grouping, "SplitRule", lambda: None)  # as import was before
        assert _import(tree, out).exit_code == 0
    with FlowStore(out) as store:
        assert store.manifest.num_splits == 0
    refused = CliRunner().invoke(trainer_main, ["run", "temporal", "--data", str(out), "--out", str(tmp_path / "r"),
                                                "--config", "small_dataset", "--no-progress"])
    assert refused.exit_code == 1, refused.output
    assert "has no train/test split" in refused.output and "`flowprep import`" in refused.output
    assert "Usage:" not in refused.output
    assert _import(tree, out).exit_code == 0
    with FlowStore(out) as store:
        assert store.manifest.num_splits == 3


# -- bad input ---------------------------------------------------------------------------------------------------

def test_bad_videos_are_named_the_run_goes_on_and_a_rerun_retries_them(tmp_path, ucf):
    _, videos = ucf
    tree = write_tree(tmp_path / "t", "mmaction2", videos)
    ids = sorted(videos)
    d = {vid: tree.folder(vid) for vid in ids}
    (d[ids[0]] / "img_00003.jpg").unlink()  # a gap in the frames
    (d[ids[1]] / "flow_y_00004.jpg").unlink()  # a gap in y
    last_y = max(d[ids[5]].glob("flow_y_*.jpg"))
    last_y.unlink()  # x and y counts differ
    for f in sorted(d[ids[2]].iterdir()):  # numbered from 0: a 0- vs 1-based mixup
        stem, number = f.stem.rsplit("_", 1)
        f.rename(f.with_name(f"{stem}_{int(number) - 1:05d}.jpg"))
    last = max(d[ids[3]].glob("img_*.jpg"))
    last.unlink()  # the last frame gone: N-1 images for N-1 fields, the count rule broken
    for f in sorted(d[ids[6]].glob("flow_*.jpg")):  # 1-based frames beside 0-based flow
        stem, number = f.stem.rsplit("_", 1)
        f.rename(f.with_name(f"{stem}_{int(number) - 1:05d}.jpg"))
    data = (d[ids[4]] / "flow_x_00002.jpg").read_bytes()
    (d[ids[4]] / "flow_x_00002.jpg").write_bytes(data[:len(data) // 2])  # a cut file
    out = tmp_path / "f.h5"
    result = _import(tree, out, "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 1, result.output
    failed = {f["video_id"]: f["reason"] for f in json.loads((tmp_path / "s.json").read_text())["failed"]}
    assert set(failed) == set(ids[:7])
    assert "gaps in the numbering of the RGB images: img_00003.jpg missing" in failed[ids[0]]
    assert "gaps in the numbering of the flow y images: flow_y_00004.jpg missing" in failed[ids[1]]
    assert "flow x and" in failed[ids[5]] and f"only one of x and y has {last_y.name.replace('_y_', '_x_')}" \
        in failed[ids[5]]
    assert "start at img_00000.jpg, 0-based numbering" in failed[ids[2]] and "--layout denseflow" in failed[ids[2]]
    assert "RGB images and" in failed[ids[3]] and "--layout tsn" in failed[ids[3]]
    assert "cut short" in failed[ids[4]] and "flow_x_00002.jpg" in failed[ids[4]]
    assert "a 0- vs 1-based mixup: the RGB images start at img_00001.jpg, the flow x images start at " \
        "flow_x_00000.jpg" in failed[ids[6]]
    for vid in ids[:7]:
        assert f"FAILED {vid}" in result.output
    with FlowStore(out) as store:
        assert store.video_ids == ids[7:] and {f["video_id"] for f in store.failures} == set(ids[:7])
    (d[ids[4]] / "flow_x_00002.jpg").write_bytes(data)  # repaired: the next run imports it, keeps the others
    again = _import(tree, out, "--summary-json", tmp_path / "s2.json")
    summary = json.loads((tmp_path / "s2.json").read_text())
    assert again.exit_code == 1 and (summary["done"], summary["skipped"], len(summary["failed"])) == (3, 2, 6)
    last_y.write_bytes(jpeg(flow(0)[..., 1]))
    third = _import(tree, out, "--summary-json", tmp_path / "s3.json")
    summary = json.loads((tmp_path / "s3.json").read_text())
    assert third.exit_code == 1 and (summary["done"], summary["skipped"], len(summary["failed"])) == (4, 3, 5)


def test_feichtenhofer_missing_flow_folder_and_misplaced_class_folders(tmp_path, ucf):
    _, videos = ucf
    tree = write_tree(tmp_path / "t", "feichtenhofer", videos)
    vid = sorted(videos)[0]
    shutil.rmtree(tree.flow / "v" / vid)
    out = tmp_path / "f.h5"
    result = _import(tree, out, "--summary-json", tmp_path / "s.json")
    failed = {f["video_id"]: f["reason"] for f in json.loads((tmp_path / "s.json").read_text())["failed"]}
    assert result.exit_code == 1 and list(failed) == [vid] and "no flow y folder" in failed[vid]
    no_uv = run_cli("import", "--layout", "feichtenhofer", "--frames", tree.frames, "--flow", tree.frames,
                    "--out", tmp_path / "g.h5", "--no-progress")
    assert no_uv.exit_code == 1 and "has no u/, v/" in no_uv.output and "--flow" in no_uv.output


def test_the_wrong_layout_is_named(tmp_path, ucf):
    _, videos = ucf
    tree = write_tree(tmp_path / "t", "tsn", {"v_YoYo_g01_c01": videos["v_YoYo_g01_c01"]})
    result = run_cli("import", "--layout", "feichtenhofer", "--frames", tree.frames, "--flow", tmp_path / "t",
                     "--out", tmp_path / "f.h5", "--no-progress")
    assert result.exit_code == 1 and not (tmp_path / "f.h5").exists()
    assert "u/, v/" in result.output
    (tmp_path / "t" / "u").mkdir()
    (tmp_path / "t" / "v").mkdir()
    result = run_cli("import", "--layout", "feichtenhofer", "--frames", tree.frames, "--flow", tmp_path / "t",
                     "--out", tmp_path / "f.h5", "--no-progress")
    assert result.exit_code == 1 and "frame000001.jpg" in result.output and "img_00001.jpg" in result.output


def test_misuse_is_exit_2_before_any_file_is_touched(tmp_path, ucf):
    _, videos = ucf
    tree = write_tree(tmp_path / "t", "denseflow", {"v_YoYo_g01_c01": videos["v_YoYo_g01_c01"]})
    out = tmp_path / "f.h5"
    for extra in (["--bound", "0"], ["--bound", "nan"], ["--jobs", "0"], ["--jpeg-quality", "101"]):
        result = run_cli("import", *tree.args(), "--out", out, *extra)
        assert result.exit_code == 2, (extra, result.output)
    assert run_cli("import", "--layout", "feichtenhofer", "--frames", tree.frames, "--out", out).exit_code == 2
    assert run_cli("import", "--layout", "tsn2", "--frames", tree.frames, "--out", out).exit_code == 2
    assert run_cli("import", *tree.args(), "--out", tmp_path).exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


# -- pure rules ---------------------------------------------------------------------------------------------------

def test_match_files_rules():
    lay = LAYOUTS["denseflow"]
    names = [f"img_{k:05d}.jpg" for k in range(4)] + [f"flow_{c}_{k:05d}.jpg" for c in "xy" for k in range(3)]
    files = match_files(lay, names, names, names, ("d", "d", "d"))
    assert files.rgb[0] == "img_00000.jpg" and files.flow[2] == ("flow_x_00002.jpg", "flow_y_00002.jpg")
    stepped = [f"img_{k:05d}.jpg" for k in range(4)] + [f"flow_{c}_p2_{k:05d}.jpg" for c in "xy" for k in range(2)]
    with pytest.raises(VideoError, match="step other than 1 .*flow_x_p2_"):
        match_files(lay, stepped, stepped, stepped, ("d", "d", "d"))
    both = names + stepped[4:]
    assert "flow_x_p2_" in match_files(lay, both, both, both, ("d", "d", "d")).ignored
    one = ["img_00000.jpg", "flow_x_00000.jpg", "flow_y_00000.jpg"][:1]
    with pytest.raises(VideoError, match="no flow x images named flow_x_00000.jpg"):
        match_files(lay, one, one, one, ("d", "d", "d"))
    stray = names + ["img_09999.jpg"]
    with pytest.raises(VideoError, match="img_00004.jpg, .* and 9990 more missing"):
        match_files(lay, stray, stray, stray, ("d", "d", "d"))


def test_jpeg_shape_reads_the_header():
    assert jpeg_shape(jpeg(frame(0))) == (H, W, 3) and jpeg_shape(jpeg(flow(0)[..., 0])) == (H, W, 1)
    assert jpeg_shape(b"\x89PNG\r\n") is None and jpeg_shape(jpeg(frame(0))[:20]) is None


# -- codecs, resume, readers -----------------------------------------------------------------------------------

def test_codecs_jpeg_encodes_again_raw_keeps_the_pixels(tmp_path, ucf):
    _, videos = ucf
    some = dict(list(sorted(videos.items()))[:3])
    tree = write_tree(tmp_path / "t", "mmaction2", some)
    stores = {}
    for codec in ("jpeg-xy", "jpeg", "raw"):
        stores[codec] = tmp_path / f"{codec}.h5"
        assert _import(tree, stores[codec], "--codec", codec).exit_code == 0
    with FlowStore(stores["jpeg-xy"]) as xy, FlowStore(stores["jpeg"]) as jp, FlowStore(stores["raw"]) as raw:
        assert jp.attrs["jpeg_quality"] == 95 and xy.attrs["jpeg_quality"] is None and raw.attrs["jpeg_quality"] is None
        for vid in some:
            n = xy.num_flows(vid)
            exact = xy.read_flow(vid, range(n))
            assert np.array_equal(raw.read_flow(vid, range(n)), exact)
            assert np.array_equal(raw.read_rgb(vid, range(n + 1)), xy.read_rgb(vid, range(n + 1)))
            assert np.array_equal(jp.read_rgb(vid, range(n + 1)), xy.read_rgb(vid, range(n + 1)))  # bytes kept
            again = jp.read_flow(vid, range(n)).astype(int) - exact
            assert 0 < np.abs(again).mean() < 1.0 and np.abs(again).max() <= 8  # the second lossy step
            assert xy.record(vid)["rgb_crc32"] == jp.record(vid)["rgb_crc32"]


def test_a_killed_import_resumes_without_redoing_finished_videos(tmp_path, ucf):
    from flowprep.interop.importing import ImportConfig, import_frames
    from flowprep.executors.local import run_pool
    from flowprep.interop.importing import import_video

    _, videos = ucf
    tree = write_tree(tmp_path / "t", "denseflow", videos)
    out = tmp_path / "f.h5"

    def dies_after_two(tasks, settings, on_outcome):
        seen = []

        def note(outcome):
            on_outcome(outcome)
            seen.append(outcome)
            if len(seen) == 2:
                raise KeyboardInterrupt

        run_pool(tasks, settings, 1, note, work=import_video)

    with pytest.raises(KeyboardInterrupt):
        import_frames(ImportConfig("denseflow", tree.frames, out, progress=False), executor=dies_after_two)
    assert not out.exists() and len(list((tmp_path / "f.h5.parts").glob("*.h5"))) == 2
    result = _import(tree, out)
    assert result.exit_code == 0 and f"done {len(videos)} (2 from earlier runs)" in result.output
    other = run_cli("import", *tree.args(), "--out", out, "--bound", "15", "--no-progress")
    assert other.exit_code == 1 and "other settings" in other.output and "bound" in other.output


def test_the_trainer_reads_a_jpeg_xy_store_like_a_raw_one(tmp_path, ucf):
    from trainer.config import load_config
    from trainer.data import TrainViews, VideoFrames

    splits, videos = ucf
    tree = write_tree(tmp_path / "t", "tsn", videos)
    stores = {c: tmp_path / f"{c}.h5" for c in ("jpeg-xy", "raw")}
    for codec, out in stores.items():
        assert _import(tree, out, "--codec", codec, "--splits", splits.splits_dir).exit_code == 0
    cfg = load_config("temporal", overrides={"flow_length": 3})
    xy, raw = FlowStore(stores["jpeg-xy"]), FlowStore(stores["raw"])
    ids = xy.manifest.ids(1, "train")
    labels = {v: xy.manifest.by_id(v).label for v in ids}
    a, b = TrainViews(xy, ids, labels, cfg), TrainViews(raw, ids, labels, cfg)
    for key in [(0, 0), (0, 3), (1, 2)]:
        (sa, fa, la), (sb, fb, lb) = a[key], b[key]
        assert sa.shape[0] == 6 and np.array_equal(sa.numpy(), sb.numpy()) and (fa, la) == (fb, lb)
    item = VideoFrames(xy, ids[:1], labels, cfg, frames=2)[0]
    assert item.error is None and item.fields.shape[1:] == (H, W, 2)


# -- export -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory, ucf):
    """An mmaction2 tree of the fake UCF101 (class folders) and its import (jpeg-xy, with the split files)."""
    splits, videos = ucf
    tmp = tmp_path_factory.mktemp("imported")
    tree = write_tree(tmp / "t", "mmaction2", videos)
    out = tmp / "flows.h5"
    assert _import(tree, out, "--splits", splits.splits_dir).exit_code == 0
    return tree, out


def test_an_mmaction2_export_reads_back_by_mmaction2_rules(tmp_path, imported):
    from tests import mmaction2_rules as mm

    tree, store_path = imported
    out = tmp_path / "export"
    result = run_cli("export", "--layout", "mmaction2", store_path, out, "--jobs", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["export.json", "rawframes"] + [f"ucf101_{s}_split_{k}_{kind}.txt" for s in ("train", "val")
                                                            for k in (1, 2, 3) for kind in ("rawframes", "flow")])
    with FlowStore(store_path) as store:
        m = store.manifest
        for k in (1, 2, 3):
            for subset, name in (("train", "train"), ("test", "val")):
                rgb = mm.load_annotations(out / f"ucf101_{name}_split_{k}_rawframes.txt", str(out / "rawframes"))
                fl = mm.load_annotations(out / f"ucf101_{name}_split_{k}_flow.txt", str(out / "rawframes"))
                assert [os.path.basename(i["frame_dir"]) for i in rgb] == m.ids(k, subset)
                for info, finfo in zip(rgb, fl):
                    vid = os.path.basename(info["frame_dir"])
                    assert info["label"] == finfo["label"] == m.by_id(vid).label  # 0-based
                    assert info["total_frames"] == store.num_frames(vid) == len(list(
                        (out / "rawframes").glob(f"*/{vid}/img_*.jpg")))
                    assert finfo["total_frames"] == store.num_flows(vid) == info["total_frames"] - 1
                    # every index mmaction2 can ask for (start_index 1) is a file, with the store's data
                    frames = mm.decode(info, range(1, info["total_frames"] + 1), "RGB")
                    assert np.array_equal(np.stack(frames), store.read_rgb(vid, range(store.num_frames(vid))))
                    planes = mm.decode(finfo, range(1, finfo["total_frames"] + 1), "Flow")
                    assert np.array_equal(np.stack(planes).reshape(-1, 2, H, W),
                                          store.read_flow_planes(vid, range(store.num_flows(vid))))
                    mm.decode(info, mm.sample_test_frames(info["total_frames"], 1, 25), "RGB")
                    mm.decode(finfo, mm.sample_test_frames(finfo["total_frames"], 5, 25), "Flow")
                    with pytest.raises(FileNotFoundError):  # the count is tight: one past the end is no file
                        mm.decode(finfo, [finfo["total_frames"] + 1], "Flow")
    # a jpeg-xy store of an mmaction2 tree exports that tree again, byte for byte
    for f in tree.frames.rglob("*.jpg"):
        assert (out / "rawframes" / f.relative_to(tree.frames)).read_bytes() == f.read_bytes()


def test_export_then_import_gives_back_the_same_arrays(tmp_path, imported):
    _, store_path = imported
    out = tmp_path / "export"
    assert run_cli("export", "--layout", "mmaction2", store_path, out, "--no-progress").exit_code == 0
    back = tmp_path / "back.h5"
    result = run_cli("import", "--layout", "mmaction2", "--frames", out / "rawframes", "--out", back, "--no-progress")
    assert result.exit_code == 0, result.output
    with FlowStore(store_path) as a, FlowStore(back) as b:
        assert a.video_ids == b.video_ids
        for vid in a.video_ids:
            n = a.num_frames(vid)
            assert b.num_frames(vid) == n
            assert np.array_equal(a.read_rgb(vid, range(n)), b.read_rgb(vid, range(n)))
            assert np.array_equal(a.read_flow(vid, range(n - 1)), b.read_flow(vid, range(n - 1)))
            assert a.record(vid)["flow_crc32"] == b.record(vid)["flow_crc32"]  # the very bytes


def test_tsn_export_drops_frame_0_and_imports_back_shifted_by_one(tmp_path, imported):
    _, store_path = imported
    out = tmp_path / "tsn"
    result = run_cli("export", "--layout", "tsn", store_path, out, "--no-progress")
    assert result.exit_code == 0 and "never writes a video's first frame" in result.output
    assert (out / "ucf101_rgb_train_split_1.txt").is_file() and (out / "ucf101_flow_val_split_2.txt").is_file()
    back = tmp_path / "back.h5"
    assert run_cli("import", "--layout", "tsn", "--frames", out / "rawframes", "--out", back,
                   "--no-progress").exit_code == 0
    with FlowStore(store_path) as a, FlowStore(back) as b:
        vid = a.video_ids[0]
        n = a.num_frames(vid)
        folder = next((out / "rawframes").glob(f"*/{vid}"))
        assert len(list(folder.glob("img_*"))) == len(list(folder.glob("flow_x_*"))) == n - 1  # images = flows
        line = next(x for x in (out / "ucf101_rgb_train_split_1.txt").read_text().splitlines() + 
                    (out / "ucf101_rgb_val_split_1.txt").read_text().splitlines() if x.split()[0].endswith(vid))
        assert line.split()[1] == str(n - 1)
        assert np.array_equal(decoded(folder / "img_00001.jpg"), a.read_rgb(vid, [1])[0])  # video frame 1
        assert np.array_equal(decoded(folder / "flow_x_00001.jpg", gray=True), a.read_flow(vid, [0])[0, ..., 0])
        # back: frame 0 of the TSN tree is never there, so the import starts one frame later
        assert b.num_frames(vid) == n - 1 and b.record(vid)["first_frame"] == 1
        assert np.array_equal(b.read_rgb(vid, range(n - 1)), a.read_rgb(vid, range(1, n)))
        assert np.array_equal(b.read_flow(vid, range(n - 2)), a.read_flow(vid, range(1, n - 1)))


def test_an_extracted_jpeg_store_exports_within_the_re_encode_error(tmp_path, synth_store):
    from tests import mmaction2_rules as mm

    out = tmp_path / "export"
    result = run_cli("export", "--layout", "mmaction2", synth_store, out, "--no-progress")
    assert result.exit_code == 0 and "encoded again as gray JPEGs at quality 95" in result.output
    back = tmp_path / "back.h5"
    assert run_cli("import", "--layout", "mmaction2", "--frames", out / "rawframes", "--out", back,
                   "--no-progress").exit_code == 0
    with FlowStore(synth_store) as a, FlowStore(back) as b:
        infos = [i for name in ("train", "val") for i in
                 mm.load_annotations(out / f"ucf101_{name}_split_1_flow.txt", str(out / "rawframes"))]
        assert sorted(os.path.basename(i["frame_dir"]) for i in infos) == a.video_ids
        errors = []
        for vid in a.video_ids:
            n = a.num_frames(vid)
            assert np.array_equal(a.read_rgb(vid, range(n)), b.read_rgb(vid, range(n)))  # RGB bytes copied
            errors.append(np.abs(a.read_flow(vid, range(n - 1)).astype(int) - b.read_flow(vid, range(n - 1))))
        err = np.concatenate([e.ravel() for e in errors])
        assert err.mean() < 1.0 and err.max() <= 12


def test_export_out_folder_rules_and_resume(tmp_path, imported):
    _, store_path = imported
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_cli("export", "--layout", "mmaction2", store_path, foreign).exit_code == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "export"
    assert run_cli("export", "--layout", "mmaction2", store_path, out, "--no-progress").exit_code == 0
    victim = next((out / "rawframes").glob("*/*"))
    shutil.rmtree(victim)  # as if the export had been stopped before this video
    (victim.parent / f".{victim.name}.999.tmp").mkdir()  # and had left a half-written folder
    again = run_cli("export", "--layout", "mmaction2", store_path, out, "--no-progress")
    assert again.exit_code == 0 and "written 1, kept from an earlier run 8" in again.output
    assert victim.is_dir() and len(list(victim.iterdir())) > 0
    other = run_cli("export", "--layout", "tsn", store_path, out, "--no-progress")
    assert other.exit_code == 1 and "another layout" in other.output
    assert run_cli("export", "--layout", "denseflow", store_path, tmp_path / "x").exit_code == 2
    assert run_cli("export", "--layout", "mmaction2", tmp_path / "none.h5", tmp_path / "y").exit_code == 1


def test_hmdb51_names_and_split_files_through_import_and_export(tmp_path):
    from tests.fake_datasets import make_fake_hmdb51

    splits = make_fake_hmdb51(tmp_path / "hmdb")  # names with ! ( ) & ', split lines with trailing spaces
    videos = {rel.split("/")[1][:-4]: (rel.split("/")[0], FRAMES) for rel in splits.expected}
    tree = write_tree(tmp_path / "t", "denseflow", videos)
    out = tmp_path / "f.h5"
    result = _import(tree, out, "--splits", splits.splits_dir)
    assert result.exit_code == 0, result.output
    with FlowStore(out) as store:
        m = store.manifest
        assert m.dataset == "hmdb51" and m.classes == ["brush_hair", "cartwheel", "chew"]
        rec = m.by_id("(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0")
        assert rec.path == "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi" and rec.label == 1
        unused = m.ids(1, "unused")
        assert len(unused) == 3
    exp = tmp_path / "export"
    assert run_cli("export", "--layout", "mmaction2", out, exp, "--no-progress").exit_code == 0
    listed = [line.split()[0].split("/")[1] for name in ("train", "val")
              for line in (exp / f"hmdb51_{name}_split_1_rawframes.txt").read_text().splitlines()]
    assert sorted(listed) == sorted(set(videos) - set(unused))  # tag 0 (unused) is in neither list


def test_flow_in_a_tree_of_its_own(tmp_path, ucf):
    """--flow for the layouts that keep flow beside the frames: the same relative folders under --flow."""
    _, videos = ucf
    some = dict(list(sorted(videos.items()))[:2])
    tree = write_tree(tmp_path / "t", "tsn", some)
    flow_root = tmp_path / "flow"
    for f in list(tree.frames.rglob("flow_*.jpg")):
        target = flow_root / f.relative_to(tree.frames)
        target.parent.mkdir(parents=True, exist_ok=True)
        f.rename(target)
    out = tmp_path / "f.h5"
    beside = _import(tree, out, "--summary-json", tmp_path / "s.json")
    assert beside.exit_code == 1 and "no flow x images named flow_x_00001.jpg" in beside.output
    result = _import(tree, tmp_path / "g.h5", "--flow", flow_root)
    assert result.exit_code == 0, result.output
    with FlowStore(tmp_path / "g.h5") as store:
        vid = store.video_ids[0]
        assert store.record(vid)["flow_dirs"][0] == f"{some[vid][0]}/{vid}"
        assert store.attrs["imported"]["flow"] == str(flow_root.absolute())
