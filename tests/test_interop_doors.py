"""The doors into and out of a store held to extract's standard (issue 17): nothing wrong stored with exit 0
(duplicate numbers, damaged JPEG data behind intact markers, 12-bit and EXIF-turned frames, gray among
colour, colour as flow, folders and classes dropped, symbolic-link loops, a stale re-export), the rounding
rule of imported flow followed on reading, mmaction2's own flow names, and one line instead of a traceback."""
import errno
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from flowprep import FlowStore
from flowprep.cli import main as cli
from tests.fake_layouts import H, W, decoded, flow, frame, jpeg, write_tree

N = 6
VIDEOS = {"v_ApplyEyeMakeup_g01_c01": ("ApplyEyeMakeup", N), "v_ApplyEyeMakeup_g02_c01": ("ApplyEyeMakeup", N),
          "v_YoYo_g01_c01": ("YoYo", N), "v_YoYo_g02_c01": ("YoYo", N + 1)}


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _import(tree, out, *extra):
    """Run an import; returns (result, {video id: failure reason})."""
    summary = out.with_name(out.name + ".summary.json")
    result = run_cli("import", *tree.args(), "--out", out, "--jobs", 1, "--no-progress", "--summary-json", summary,
                     *extra)
    failed = {f["video_id"]: f["reason"] for f in json.loads(summary.read_text())["failed"]} \
        if summary.exists() else {}
    return result, failed


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "t", "mmaction2", VIDEOS)


# -- wrong data stored in silence ------------------------------------------------------------------------------

def test_two_files_of_one_number_fail_the_video_naming_both(tmp_path, tree):
    a, b = tree.folder("v_YoYo_g01_c01"), tree.folder("v_ApplyEyeMakeup_g01_c01")
    (a / "flow_x_3.jpg").write_bytes(jpeg(flow(5)[..., 0]))
    (b / "img_3.jpg").write_bytes(jpeg(frame(5)))
    result, failed = _import(tree, tmp_path / "f.h5")
    assert result.exit_code == 1 and set(failed) == {"v_YoYo_g01_c01", "v_ApplyEyeMakeup_g01_c01"}
    assert "flow_x_00003.jpg and flow_x_3.jpg both are number 3" in failed["v_YoYo_g01_c01"]
    assert "img_00003.jpg and img_3.jpg both are number 3" in failed["v_ApplyEyeMakeup_g01_c01"]


def _cut_inside_scan(data: bytes) -> bytes:
    """The JPEG with its entropy-coded data cut to a third and the end marker put back: markers intact."""
    sos = data.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    return data[:scan + (len(data) - scan) // 3] + b"\xff\xd9"


def test_damaged_jpeg_data_behind_intact_markers_fails_the_video(tmp_path, tree):
    a, b = tree.folder("v_YoYo_g01_c01"), tree.folder("v_ApplyEyeMakeup_g01_c01")
    for f in (a / "img_00004.jpg", b / "flow_y_00002.jpg"):
        f.write_bytes(_cut_inside_scan(f.read_bytes()))
    result, failed = _import(tree, tmp_path / "f.h5")
    assert result.exit_code == 1 and set(failed) == {"v_YoYo_g01_c01", "v_ApplyEyeMakeup_g01_c01"}
    for vid, name in (("v_YoYo_g01_c01", "img_00004.jpg"), ("v_ApplyEyeMakeup_g01_c01", "flow_y_00002.jpg")):
        assert name in failed[vid] and "damaged JPEG data" in failed[vid] and "Corrupt JPEG data" in failed[vid]
    assert "Traceback" not in result.output


def _with_exif_orientation(data: bytes, orientation: int) -> bytes:
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little") + \
        (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little") + \
        orientation.to_bytes(2, "little") + b"\x00\x00" + (0).to_bytes(4, "little")
    body = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def _twelve_bit(data: bytes) -> bytes:
    sof = data.index(b"\xff\xc0")
    return data[:sof + 4] + bytes([12]) + data[sof + 5:]


def test_12_bit_and_exif_turned_frames_gray_among_colour_and_colour_flow_are_refused(tmp_path, tree):
    from flowprep.interop.jpegs import jpeg_header

    cases = {"v_YoYo_g01_c01": ("img_00002.jpg", lambda d: _twelve_bit(d), "a 12-bit JPEG"),
             "v_YoYo_g02_c01": ("img_00003.jpg", lambda d: _with_exif_orientation(d, 6), "rotated 90 degrees"),
             "v_ApplyEyeMakeup_g01_c01": ("img_00002.jpg", lambda d: jpeg(frame(1)[..., 0]), "a gray JPEG"),
             "v_ApplyEyeMakeup_g02_c01": ("flow_x_00002.jpg", lambda d: jpeg(frame(1)), "colour) JPEG as flow")}
    for vid, (name, change, _) in cases.items():
        f = tree.folder(vid) / name
        f.write_bytes(change(f.read_bytes()))
    assert jpeg_header(_with_exif_orientation(jpeg(frame(0)), 6)).orientation == 6
    assert jpeg_header(_twelve_bit(jpeg(frame(0)))).precision == 12
    result, failed = _import(tree, tmp_path / "f.h5")
    assert result.exit_code == 1 and set(failed) == set(cases)
    for vid, (name, _, why) in cases.items():
        assert name in failed[vid] and why in failed[vid], failed[vid]


def test_verify_advice_names_the_command_that_made_the_store(tmp_path, tree, synth_store):
    import h5py

    out = tmp_path / "f.h5"
    assert _import(tree, out)[0].exit_code == 0
    with h5py.File(out, "r+") as f:
        data = f["videos/v_YoYo_g01_c01/rgb_jpeg"]
        data[200] = data[200] ^ 0xFF
    result = run_cli("verify", out, "--no-progress")
    assert result.exit_code == 1 and "import that video again (`flowprep import`" in result.output
    assert "re-extract" not in result.output
    with FlowStore(synth_store) as store:
        assert "`flowprep extract`" in store.redo


def test_every_folder_is_imported_or_a_failure_with_its_reason(tmp_path, tree):
    gone = tree.folder("v_YoYo_g01_c01")
    for f in gone.glob("img_*"):
        f.unlink()  # frames gone, flow there
    upper = tree.folder("v_YoYo_g02_c01")
    for f in upper.iterdir():
        f.rename(f.with_suffix(".JPG"))  # upper case: the same files
    (tree.frames / "YoYo" / "v_YoYo_g03_c01").mkdir()  # an empty video folder
    result, failed = _import(tree, tmp_path / "f.h5")
    assert result.exit_code == 1 and set(failed) == {"v_YoYo_g01_c01", "v_YoYo_g03_c01"}
    assert "no frames: the frames are gone" in failed["v_YoYo_g01_c01"]
    assert "the folder is empty" in failed["v_YoYo_g03_c01"]
    with FlowStore(tmp_path / "f.h5") as store:
        assert "v_YoYo_g02_c01" in store and store.manifest.classes == ["ApplyEyeMakeup", "YoYo"]
        assert np.array_equal(store.read_rgb("v_YoYo_g02_c01", [0])[0], decoded(upper / "img_00001.JPG"))


def test_a_class_that_would_lose_all_its_videos_is_refused(tmp_path, tree):
    for vid in ("v_YoYo_g01_c01", "v_YoYo_g02_c01"):
        for f in tree.folder(vid).iterdir():
            f.unlink()
    result, _ = _import(tree, tmp_path / "f.h5")
    assert result.exit_code == 1 and "YoYo: a class folder" in result.output and "labels" in result.output
    assert not (tmp_path / "f.h5").exists()
    shutil.rmtree(tree.frames / "YoYo")
    (tree.frames / "YoYo").mkdir()  # no video folders at all
    result, _ = _import(tree, tmp_path / "f.h5")
    assert result.exit_code == 1 and "YoYo: a class folder without video folders" in result.output


def test_a_feichtenhofer_video_missing_from_jpegs_256_fails(tmp_path):
    t = write_tree(tmp_path / "t", "feichtenhofer", VIDEOS)
    shutil.rmtree(t.frames / "v_YoYo_g01_c01")
    result, failed = _import(t, tmp_path / "f.h5")
    assert result.exit_code == 1 and list(failed) == ["v_YoYo_g01_c01"]
    assert "flow images but no frames folder" in failed["v_YoYo_g01_c01"]


def test_symbolic_link_loops_are_named_and_hide_nothing(tmp_path, tree):
    os.symlink("v_loop", tree.frames / "YoYo" / "v_loop")  # points at itself
    os.symlink("..", tree.frames / "YoYo" / "v_up")  # points above itself
    inner = tree.folder("v_ApplyEyeMakeup_g01_c01") / "img_00007.jpg"
    os.symlink(inner.name, inner)  # a frame that is a loop
    result, failed = _import(tree, tmp_path / "f.h5")
    assert result.exit_code == 1 and set(failed) == {"v_loop", "v_up", "v_ApplyEyeMakeup_g01_c01"}
    assert all("symbolic link that loops" in r for r in failed.values())
    assert f"{inner}: a symbolic link that loops" in failed["v_ApplyEyeMakeup_g01_c01"]
    with FlowStore(tmp_path / "f.h5") as store:
        assert set(store.video_ids) == set(VIDEOS) - {"v_ApplyEyeMakeup_g01_c01"}
    top = tmp_path / "only_a_loop"
    top.mkdir()
    os.symlink("v_a", top / "v_a")
    result = run_cli("import", "--layout", "mmaction2", "--frames", top, "--out", tmp_path / "g.h5", "--no-progress")
    assert result.exit_code == 1 and "v_a: a symbolic link that loops" in result.output


# -- names -------------------------------------------------------------------------------------------------------

def test_mmaction2_x_y_flow_names_unpadded_names_and_what_was_found(tmp_path, tree):
    xy = tree.folder("v_YoYo_g01_c01")
    for f in xy.glob("flow_*"):
        f.rename(f.with_name(f.name[len("flow_"):]))  # x_00001.jpg, as flow_extraction.py writes by default
    unpadded = tree.folder("v_YoYo_g02_c01")
    for f in unpadded.iterdir():
        stem, number = f.stem.rsplit("_", 1)
        f.rename(f.with_name(f"{stem}_{int(number)}.jpg"))  # img_1.jpg
    out = tmp_path / "f.h5"
    result, failed = _import(tree, out)
    assert result.exit_code == 0, result.output
    with FlowStore(out) as store:
        assert np.array_equal(store.read_flow("v_YoYo_g01_c01", [0])[0, ..., 0], decoded(xy / "x_00001.jpg", True))
        assert np.array_equal(store.read_rgb("v_YoYo_g02_c01", [2])[0], decoded(unpadded / "img_3.jpg"))
        assert store.record("v_YoYo_g02_c01")["rgb_files"] == "img_1.jpg..img_7.jpg"
    both = tree.folder("v_ApplyEyeMakeup_g01_c01")
    shutil.copy(both / "flow_x_00001.jpg", both / "x_00001.jpg")
    none = tree.folder("v_ApplyEyeMakeup_g02_c01")
    for f in none.glob("flow_*"):
        f.rename(f.with_name(f.name.replace("flow_x_", "u_").replace("flow_y_", "v_")))
    result, failed = _import(tree, tmp_path / "g.h5")
    assert "flow named both as flow_x_00001.jpg and as x_00001.jpg" in failed["v_ApplyEyeMakeup_g01_c01"]
    assert "no flow x images named flow_x_00001.jpg, flow_x_00002.jpg, ... or x_00001.jpg" in \
        failed["v_ApplyEyeMakeup_g02_c01"] and "the folder holds img_00001.jpg" in failed["v_ApplyEyeMakeup_g02_c01"]


# -- rounding ----------------------------------------------------------------------------------------------------

def _truncated(v: np.ndarray, b: float = 20.0) -> np.ndarray:
    """mmaction2's flow_extraction.py flow_to_img: clip, shift, scale, astype(uint8)."""
    v = np.clip(v, -b, b) + b
    return (v * (255 / float(2 * b))).astype(np.uint8)


def test_truncated_flow_reads_back_centred_and_the_rule_is_one_option(tmp_path, monkeypatch):
    from flowprep.flow.quantize import TRUNCATION_RULE, dequantize
    from trainer.config import load_config
    from trainer.data import TrainViews, flow_center, open_store

    rng = np.random.default_rng(0)
    true = [rng.uniform(-6, 6, (H, W, 2)).astype(np.float32) for _ in range(N - 1)]
    true[0][:] = 0.0  # no motion at all
    folder = tmp_path / "t" / "YoYo" / "v_YoYo_g01_c01"
    folder.mkdir(parents=True)
    for k in range(N):
        (folder / f"img_{k + 1:05d}.jpg").write_bytes(jpeg(frame(k)))
    for k, v in enumerate(true, start=1):  # as flow_extraction.py writes them (default names, gray JPEGs)
        q = _truncated(v)
        (folder / f"x_{k:05d}.jpg").write_bytes(jpeg(q[..., 0]))
        (folder / f"y_{k:05d}.jpg").write_bytes(jpeg(q[..., 1]))
    frames = tmp_path / "t"
    out, rounded = tmp_path / "trunc.h5", tmp_path / "round.h5"
    assert run_cli("import", "--layout", "mmaction2", "--frames", frames, "--out", out, "--no-progress").exit_code == 0
    assert run_cli("import", "--layout", "mmaction2", "--frames", frames, "--out", rounded, "--rounding", "round",
                   "--no-progress").exit_code == 0
    with FlowStore(out) as store, FlowStore(rounded) as other:
        assert store.rounding == "truncate" and store.attrs["rounding"] == TRUNCATION_RULE
        assert store.attrs["dequantize"] == "v = (u8 + 0.5) * 2b / 255 - b" and store.flow_zero == 127.0
        assert other.rounding == "round" and other.flow_zero == 128.0
        q = store.read_flow("v_YoYo_g01_c01", range(N - 1))
        assert np.all(q[0] == 127)  # zero flow, truncated
        assert np.all(store.dequantize(q[0]) == 0.0)  # ... reads back as zero, not 0.08 px low
        err = store.dequantize(q[1:]) - np.stack(true[1:])
        assert abs(float(err.mean())) < 0.01  # no bias: JPEG noise only
        biased = other.dequantize(q[1:]) - np.stack(true[1:])
        assert float(biased.mean()) == pytest.approx(-20 / 255, abs=0.02)  # read as rounded: half a step low
        assert other.dequantize(q[0]).mean() == pytest.approx(-0.0784, abs=1e-3)  # the wrong rule's bias
        assert np.array_equal(store.dequantize(q), dequantize(q, 20.0, "truncate"))
        assert flow_center(open_store(out)) == 127.0  # the trainer centres on the store's zero
        assert flow_center(open_store(rounded)) == 128.0
        views = TrainViews(open_store(out), ["v_YoYo_g01_c01"], {"v_YoYo_g01_c01": 0},
                           load_config("temporal", overrides={"flow_length": 2, "decode": "cpu"}))
        assert views.flow_center == 127.0
        info = run_cli("info", out)
        assert "rounding   truncate" in info.output and "flow_extraction.py" in info.output
    # a flowprep export of a rounded store imports back rounded (its export.json says so)
    exp = tmp_path / "exp"
    assert run_cli("export", "--layout", "mmaction2", rounded, exp, "--no-progress").exit_code == 0
    back = tmp_path / "back.h5"
    assert run_cli("import", "--layout", "mmaction2", "--frames", exp / "rawframes", "--out", back,
                   "--no-progress").exit_code == 0
    with FlowStore(back) as b:
        assert b.rounding == "round"
    bad = run_cli("import", "--layout", "tsn", "--frames", frames, "--out", tmp_path / "x.h5", "--rounding", "up")
    assert bad.exit_code == 2


def test_show_follows_the_stores_rounding(tmp_path, tree, monkeypatch):
    from flowprep.inspection import show
    from flowprep.store.reader import FlowStore as Reader

    out = tmp_path / "f.h5"
    assert _import(tree, out)[0].exit_code == 0
    seen = []
    real = Reader.dequantize
    monkeypatch.setattr(Reader, "dequantize", lambda self, q: seen.append(self.rounding) or real(self, q))
    assert show(out, "v_YoYo_g01_c01", tmp_path / "s.png", 2).is_file()
    assert seen == ["truncate"]  # the picture's speeds are read with the store's rule
    with FlowStore(out) as store:
        assert np.all(store.dequantize(np.full((2, 2), 127, np.uint8)) == 0.0)


# -- export ------------------------------------------------------------------------------------------------------

def test_a_re_export_after_the_store_changed_rewrites_and_removes(tmp_path, tree):
    out, exp = tmp_path / "f.h5", tmp_path / "exp"
    assert _import(tree, out)[0].exit_code == 0
    assert run_cli("export", "--layout", "mmaction2", out, exp, "--no-progress").exit_code == 0
    short = tree.folder("v_YoYo_g02_c01")  # 7 frames -> 5
    for name in ("img_00007.jpg", "img_00006.jpg", "flow_x_00006.jpg", "flow_y_00006.jpg", "flow_x_00005.jpg",
                 "flow_y_00005.jpg"):
        (short / name).unlink()
    shutil.rmtree(tree.folder("v_ApplyEyeMakeup_g02_c01"))
    assert _import(tree, out)[0].exit_code == 0
    again = run_cli("export", "--layout", "mmaction2", out, exp, "--no-progress")
    assert again.exit_code == 0, again.output
    assert "written again: 1 video(s)" in again.output and "removed: 1 video folder(s)" in again.output
    folder = exp / "rawframes" / "YoYo" / "v_YoYo_g02_c01"
    assert len(list(folder.glob("img_*.jpg"))) == 5 and len(list(folder.glob("flow_x_*.jpg"))) == 4
    assert not (exp / "rawframes" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g02_c01").exists()
    lines = [line for part in ("train", "val")  # split 1 of the split made without split files: every video
             for line in (exp / f"folder_{part}_split_1_rawframes.txt").read_text().splitlines()]
    assert "YoYo/v_YoYo_g02_c01 5 1" in lines and not any("g02_c01 " in x and "Apply" in x for x in lines)
    assert not [p for p in (exp / "rawframes").rglob(".*") if p.name != ".flowprep-export.json"]


def test_export_json_that_is_a_list_is_one_line(tmp_path, tree):
    out = tmp_path / "f.h5"
    assert _import(tree, out)[0].exit_code == 0
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "export.json").write_text("[1, 2]")
    result = run_cli("export", "--layout", "mmaction2", out, exp, "--no-progress")
    assert result.exit_code == 2 and "not an export record" in result.output and "Traceback" not in result.output


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, tree, monkeypatch):
    import plumbing.atomic

    from flowprep.interop.exporting import DiskFull, ExportSettings, export_video
    from flowprep.outcomes import ExportTask

    out = tmp_path / "f.h5"
    assert _import(tree, out)[0].exit_code == 0
    real = plumbing.atomic.atomic_open

    def full(path, *a, **k):
        if str(path).endswith(".txt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(plumbing.atomic, "atomic_open", full)
    exp = tmp_path / "exp"
    result = run_cli("export", "--layout", "mmaction2", out, exp, "--jobs", 1, "--no-progress")
    assert result.exit_code == 1 and "no space left on device writing" in result.output
    assert "re-run the same command" in result.output and "Traceback" not in result.output
    assert not [p for p in exp.rglob("*.tmp")]
    monkeypatch.setattr(plumbing.atomic, "atomic_open", real)

    def no_room(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_bytes", no_room)
    settings = ExportSettings(str(out), str(tmp_path / "e2"), "mmaction2")
    target = tmp_path / "e2" / "rawframes" / "YoYo" / "v_YoYo_g01_c01"
    got = export_video(ExportTask("v_YoYo_g01_c01", "YoYo/v_YoYo_g01_c01", "YoYo", 1, folder=str(target)), settings)
    assert isinstance(got, DiskFull) and "no space left on device" in got.reason
    assert not target.exists() and not list(target.parent.iterdir())


# -- messages ----------------------------------------------------------------------------------------------------

def test_lock_and_info_name_flowprep_import_while_an_import_runs(tmp_path, tree):
    from plumbing.atomic import exclusive_lock

    out = tmp_path / "f.h5"
    parts = tmp_path / "f.h5.parts"
    parts.mkdir()
    (parts / "config.json").write_text(json.dumps({"algo": "imported"}))  # what a running import keeps there
    with exclusive_lock(tmp_path / "f.h5.lock"):
        result, _ = _import(tree, out)
        info = run_cli("info", out)
    assert result.exit_code == 1 and "another flowprep import (pid" in result.output
    assert info.exit_code == 1 and "`flowprep import` is writing it" in info.output
    assert "extract" not in result.output + info.output


@pytest.mark.slow
def test_the_trainer_names_a_video_whose_flow_fails_its_checksums(tmp_path, tree, monkeypatch):
    import h5py
    from torch.utils.data import DataLoader

    from trainer.config import load_config
    from trainer.data import TrainViews, open_store
    from trainer.errors import DataError

    out = tmp_path / "f.h5"
    assert _import(tree, out)[0].exit_code == 0
    with h5py.File(out, "r+") as f:
        crcs = f["videos/v_YoYo_g01_c01/flow_crcs"]
        crcs[0::2] = crcs[0::2] ^ 1  # every x image
    store = open_store(str(out))
    cfg = load_config("temporal", overrides={"flow_length": 2})
    views = TrainViews(store, ["v_YoYo_g01_c01"], {"v_YoYo_g01_c01": 1}, cfg)
    loader = DataLoader(views, batch_size=1, num_workers=1, sampler=[(0, 0)])
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    text = str(caught.value)
    assert text.startswith("v_YoYo_g01_c01: 3 positions failed to decode") and "\n" not in text
    assert "`flowprep import`" in text and "Caught" not in text
