"""build_manifest on fake UCF101 / HMDB51 / folder trees: parsing, quirks, checks and errors with file:line."""
from __future__ import annotations

import re
import shutil
from collections import Counter

import pytest

from data_manifest import SPLIT_NONE, ManifestError, build_manifest
from data_manifest.assemble import OFFICIAL, official_count_problems
from data_manifest.grouping import NO_GROUPS, NUM_SPLITS
from tests.fake_datasets import (HMDB_VIDEOS, make_fake_hmdb51, make_fake_ucf101, replace_line, ucf_name)


def _by_path(m):
    return {r.path: r for r in m.records}


# -- UCF101 ---------------------------------------------------------------------------------------------------

def test_ucf101_official_layout(tmp_path):
    tree = make_fake_ucf101(tmp_path)
    assert b"\r\n" in (tree.splits_dir / "trainlist01.txt").read_bytes()  # the fixture has the official CRLF
    m = build_manifest(tmp_path)
    assert m.dataset == "ucf101"
    assert m.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert m.num_splits == 3 and m.problems == []
    assert [r.path for r in m.records] == sorted(tree.path(rel) for rel in tree.expected)
    for rel, splits in tree.expected.items():
        rec = _by_path(m)[tree.path(rel)]
        assert rec.splits == splits
        assert (tmp_path / rec.path).is_file()  # paths are relative to the root given to build_manifest


def test_ucf101_class_from_folder_not_file_name(tmp_path):
    tree = make_fake_ucf101(tmp_path)
    rec = build_manifest(tmp_path).by_id("v_HandStandPushups_g03_c02")
    assert rec.path == "UCF-101/HandstandPushups/v_HandStandPushups_g03_c02.avi"
    assert (rec.class_name, rec.label, rec.group) == ("HandstandPushups", 1, 3)
    assert tree.classes[rec.label] == rec.class_name


def test_ucf101_groups_and_test_thirds(tmp_path):
    make_fake_ucf101(tmp_path, groups=6)
    m = build_manifest(tmp_path)
    for k in (1, 2, 3):
        test_groups = {m.by_id(v).group for v in m.ids(k, "test")}
        assert test_groups == {2 * k - 1, 2 * k}
    assert Counter(r.group for r in m.records) == {g: 6 for g in range(1, 7)}  # 3 classes x 2 clips


def test_ucf101_flat_layout_and_splits_beside_root(tmp_path):
    tree = make_fake_ucf101(tmp_path, nested=True)
    # ROOT = the folder of class folders; ucfTrainTestlist sits beside it, as after unpacking the official zips
    m = build_manifest(tree.video_dir)
    assert m.dataset == "ucf101"
    assert m.by_id("v_YoYo_g01_c01").path == "YoYo/v_YoYo_g01_c01.avi"


def test_ucf101_explicit_splits_dir(tmp_path):
    tree = make_fake_ucf101(tmp_path / "data", nested=False)
    elsewhere = tmp_path / "lists"
    shutil.move(tree.splits_dir, elsewhere)
    assert build_manifest(tmp_path / "data").dataset == "folder"  # nothing found under or beside the root
    m = build_manifest(tmp_path / "data", splits_dir=elsewhere)
    assert m.dataset == "ucf101" and len(m) == len(tree.expected)
    with pytest.raises(ManifestError, match="no UCF101 split files"):
        build_manifest(tmp_path / "data", dataset="ucf101")


def test_ucf101_splits_found_two_levels_down(tmp_path):
    tree = make_fake_ucf101(tmp_path)
    shutil.move(tree.splits_dir, tmp_path / "meta" / "lists")  # not a well-known name, depth 2
    assert build_manifest(tmp_path).dataset == "ucf101"


def test_fewer_splits_is_fine(tmp_path):
    make_fake_ucf101(tmp_path, splits=1)
    m = build_manifest(tmp_path)
    assert m.num_splits == 1 and all(len(r.splits) == 1 for r in m.records)


@pytest.mark.parametrize("file, line_no, text, message", [
    ("trainlist01.txt", 3, "HandstandPushups/v_HandStandPushups_g03_c01.avi 3", "label 3 disagrees with classInd"),
    ("trainlist01.txt", 1, "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi", "expected '<Class>/<video>.avi <label>'"),
    ("trainlist02.txt", 3, "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi one", "whole-number label"),
    ("testlist01.txt", 2, "UCF-101/YoYo/v_YoYo_g01_c01.avi", "expected '<Class>/<video>.avi'"),
    ("testlist01.txt", 2, "YoYo/v_YoYo_g01_c01.txt", "video extension"),
    ("testlist03.txt", 1, "Juggling/v_Juggling_g05_c01.avi", "'Juggling' is not in classInd.txt"),
    ("classInd.txt", 2, "two HandstandPushups", "expected '<id> <ClassName>'"),
    ("classInd.txt", 3, "2 YoYo", "class id 2 repeated"),
    ("classInd.txt", 3, "4 YoYo", "id 3 is missing"),
    ("testlist01.txt", 2, "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "listed twice in split 1"),
])
def test_ucf101_malformed_lines_name_file_and_line(tmp_path, file, line_no, text, message):
    tree = make_fake_ucf101(tmp_path)
    replace_line(tree.splits_dir / file, line_no, text)
    with pytest.raises(ManifestError, match=re.escape(message)) as err:
        build_manifest(tmp_path)
    located = f"{file}:{line_no}:" if "missing" not in message else f"{file}:"
    assert located in str(err.value)


def test_ucf101_missing_split_file(tmp_path):
    tree = make_fake_ucf101(tmp_path)
    (tree.splits_dir / "testlist02.txt").unlink()
    with pytest.raises(ManifestError, match=r"testlist02\.txt is missing"):
        build_manifest(tmp_path)


def test_ucf101_missing_videos_error_or_left_out(tmp_path):
    gone = tuple(f"YoYo/{ucf_name('YoYo', g, 1)}" for g in range(1, 7))
    tree = make_fake_ucf101(tmp_path, missing=gone)
    with pytest.raises(ManifestError) as err:
        build_manifest(tmp_path)
    assert "6 of 36 videos" in str(err.value) and gone[0] in str(err.value)
    m = build_manifest(tmp_path, allow_missing=True)
    assert len(m) == 30 and all(r.path != tree.path(g) for r in m.records for g in gone)
    assert any("missing" in p and gone[0] in p for p in m.problems)


def test_missing_videos_that_differ_only_in_extension_get_a_hint(tmp_path):
    converted = tuple(f"YoYo/{ucf_name('YoYo', g, 1)}" for g in (1, 2))
    tree = make_fake_ucf101(tmp_path, missing=converted)
    for rel in converted:  # the split files name .avi, the disk holds .mp4 (a converted copy)
        (tree.video_dir / rel).with_suffix(".mp4").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"2 of them exist with another extension \(e\.g\. "
                                            r"YoYo/v_YoYo_g01_c01\.avi is on disk as YoYo/v_YoYo_g01_c01\.mp4\)"):
        build_manifest(tmp_path)


def test_missing_list_is_capped(tmp_path):
    gone = tuple(f"YoYo/{ucf_name('YoYo', g, c)}" for g in range(1, 7) for c in (1, 2))
    make_fake_ucf101(tmp_path, missing=gone)
    with pytest.raises(ManifestError, match=r"12 of 36 .*and 2 more"):
        build_manifest(tmp_path)


def test_ucf101_unlisted_videos_and_stray_folders_are_problems(tmp_path):
    extra = ("YoYo/v_YoYo_g07_c01.avi", "YoYo/v_YoYo_g07_c02.MP4")
    tree = make_fake_ucf101(tmp_path, unlisted=extra + ("Juggling/v_Juggling_g01_c01.avi",))
    (tree.video_dir / "YoYo" / "notes.txt").write_text("not a video")
    (tree.video_dir / "YoYo" / "._v_YoYo_g01_c01.avi").write_bytes(b"")  # macOS resource fork: ignored
    m = build_manifest(tmp_path)
    assert m.by_id("v_YoYo_g07_c02").splits == (SPLIT_NONE,) * 3
    assert m.by_id("v_YoYo_g07_c02").path.endswith(".MP4")
    assert "v_YoYo_g07_c01" not in m.ids(1, "train") + m.ids(1, "test")
    assert "v_Juggling_g01_c01" not in m
    assert len(m.problems) == 2
    assert "are in no split file (kept, with split '-'): YoYo/v_YoYo_g07_c01.avi, YoYo/v_YoYo_g07_c02.MP4" \
        in m.problems[1]
    assert "1 folders in" in m.problems[0] and "are not classes of the split files" in m.problems[0]
    assert any("Juggling" in p for p in m.problems)


def test_count_check_on_a_recognised_dataset(tmp_path):
    classes = tuple(f"Class{i:03d}" for i in range(101))
    make_fake_ucf101(tmp_path, classes=classes, groups=3, clips=1)
    m = build_manifest(tmp_path)
    assert len(m.problems) == 6  # train and test count of each of the 3 splits
    assert "split 1: 202 train videos, the official UCF101 split 1 has 9537" in m.problems


def test_count_check_function():
    counts = {k: Counter(v) for k, v in OFFICIAL["ucf101"].sizes.items()}
    assert official_count_problems("ucf101", 101, counts) == []
    assert official_count_problems("ucf101", 100, {}) == []  # not the official class count: no check
    counts[2]["test"] -= 1
    assert official_count_problems("ucf101", 101, counts) == [
        "split 2: 3733 test videos, the official UCF101 split 2 has 3734"]
    hmdb = {k: Counter(train=3570, test=1530, unused=1666) for k in (1, 2)}
    assert official_count_problems("hmdb51", 51, hmdb) == ["split 3 is missing; the official HMDB51 has 3 splits"]


def test_duplicate_video_id_names_both_paths(tmp_path):
    make_fake_ucf101(tmp_path, unlisted=("YoYo/v_ApplyEyeMakeup_g01_c01.mp4",))
    with pytest.raises(ManifestError, match="duplicate video id 'v_ApplyEyeMakeup_g01_c01'") as err:
        build_manifest(tmp_path)
    assert "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi" in str(err.value)
    assert "UCF-101/YoYo/v_ApplyEyeMakeup_g01_c01.mp4" in str(err.value)


def test_ambiguous_split_folders(tmp_path):
    tree = make_fake_ucf101(tmp_path)
    shutil.move(tree.splits_dir, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ManifestError, match="in 2 folders"):
        build_manifest(tmp_path)


def test_both_datasets_under_one_root_need_a_choice(tmp_path):
    make_fake_ucf101(tmp_path / "ucf")
    make_fake_hmdb51(tmp_path / "hmdb")
    with pytest.raises(ManifestError, match="more than one dataset"):
        build_manifest(tmp_path)


# -- HMDB51 ---------------------------------------------------------------------------------------------------

def test_hmdb51_parsing(tmp_path):
    tree = make_fake_hmdb51(tmp_path)
    m = build_manifest(tmp_path)
    assert m.dataset == "hmdb51" and m.problems == []
    assert m.classes == sorted(HMDB_VIDEOS)
    for rel, splits in tree.expected.items():
        rec = _by_path(m)[tree.path(rel)]
        assert rec.splits == splits and rec.group is None
        assert m.classes[rec.label] == rel.split("/")[0]
    odd = m.by_id("Jim_Carrey_&_Ellen_chew_h_nm_np1_fr_goo_1")
    assert odd.path == "hmdb51_org/chew/Jim_Carrey_&_Ellen_chew_h_nm_np1_fr_goo_1.avi"
    assert (tmp_path / m.by_id("(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0").path).is_file()
    assert sorted(Counter(r.splits[0] for r in m.records).items()) == [("test", 3), ("train", 3), ("unused", 3)]


def test_hmdb51_explicit_dataset_and_missing_split_file(tmp_path):
    tree = make_fake_hmdb51(tmp_path)
    (tree.splits_dir / "chew_test_split3.txt").unlink()
    with pytest.raises(ManifestError, match=r"chew_test_split3\.txt is missing"):
        build_manifest(tmp_path, dataset="hmdb51")
    with pytest.raises(ManifestError, match="no UCF101 split files"):
        build_manifest(tmp_path, dataset="ucf101")


@pytest.mark.parametrize("text, message", [
    ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi 3", "tag 1 (train), 2 (test) or 0 (unused)"),
    ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "expected '<video>.avi <tag>'"),
    ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1", "without folders"),
    ("Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 1", "listed twice (first on line 2)"),
])
def test_hmdb51_malformed_lines(tmp_path, text, message):
    tree = make_fake_hmdb51(tmp_path)
    replace_line(tree.splits_dir / "brush_hair_test_split2.txt", 1 if "twice" not in message else 3, text)
    with pytest.raises(ManifestError, match=re.escape(message)) as err:
        build_manifest(tmp_path)
    assert "brush_hair_test_split2.txt:" in str(err.value)


# -- plain folders and root handling ----------------------------------------------------------------------------

def test_folder_dataset(tmp_path):
    for rel in ("walk/b.mp4", "walk/a.avi", "jump/x.mkv", "empty/readme.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    m = build_manifest(tmp_path, split_rule=None)  # no split files and no generated split
    assert (m.dataset, m.classes, m.num_splits) == ("folder", ["jump", "walk"], 0)
    assert [(r.path, r.label, r.splits) for r in m.records] == [
        ("jump/x.mkv", 0, ()), ("walk/a.avi", 1, ()), ("walk/b.mp4", 1, ())]
    assert m.ids(subset="all") == ["x", "a", "b"]
    assert any("empty" in p for p in m.problems)
    assert m.split_method == "" and m.group_rule == NO_GROUPS
    with pytest.raises(ManifestError, match="no splits: .*--splits"):
        m.ids(1, "train")
    made = build_manifest(tmp_path)  # the default: a generated split
    assert made.num_splits == NUM_SPLITS and made.split_method.startswith("generated: stratified by class")
    # a class of one video keeps it for training; walk's two videos: one in test (30% of 2 rounds to 1)
    assert all(made.by_id("x").splits[k] == "train" for k in range(3))
    assert all(sorted(made.by_id(v).splits[k] for v in "ab") == ["test", "train"] for k in range(3))
    assert any("generated split 1: 1 classes have no test videos" in p and "jump" in p for p in made.problems)


def test_more_containers_are_videos_and_other_files_are_counted(tmp_path):
    from data_manifest.build import build

    names = ("a.ts", "b.3gp", "c.ogv", "d.mpeg", "e.wmv", "f.flv", "g.M2TS", "notes.txt", "thumb.jpg", ".hidden.avi")
    for name in names:
        (tmp_path / "walk" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "walk" / name).write_bytes(b"")
    m, info = build(tmp_path)
    assert [r.video_id for r in m.records] == ["a", "b", "c", "d", "e", "f", "g"]
    assert info.skipped == ("walk/notes.txt", "walk/thumb.jpg")


def test_folder_forced_on_ucf_tree(tmp_path):
    tree = make_fake_ucf101(tmp_path)
    m = build_manifest(tmp_path, dataset="folder")
    assert m.dataset == "folder" and len(m) == len(tree.expected) and m.classes == sorted(tree.classes)


def test_root_errors(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        build_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="unknown dataset 'kinetics'"):
        build_manifest(tmp_path, dataset="kinetics")
    (tmp_path / "A").mkdir()
    with pytest.raises(ManifestError, match="no videos found"):
        build_manifest(tmp_path)
    for top in ("one", "two"):
        (tmp_path / top / "C").mkdir(parents=True)
        (tmp_path / top / "C" / "v.avi").write_bytes(b"")
    with pytest.raises(ManifestError, match="2 folders that hold class folders"):
        build_manifest(tmp_path)
    with pytest.raises(ManifestError, match="splits folder .* does not exist"):
        build_manifest(tmp_path / "one", splits_dir=tmp_path / "lists")


# -- frame folders written by other tools (flowprep import) ----------------------------------------------------

def _ucf_ids(tree):
    return {rel.split("/")[1][:-4]: rel.split("/")[0] for rel in tree.expected}


def test_folders_without_class_folders_take_the_class_from_the_split_files(tmp_path):
    from data_manifest.build import build_from_folders

    tree = make_fake_ucf101(tmp_path)
    found = {vid: None for vid in _ucf_ids(tree)}  # the twostreamfusion layout: v_<name>/ directly
    m = build_from_folders(found, tree.splits_dir)
    full = build_manifest(tmp_path)
    assert m.dataset == "ucf101" and m.classes == full.classes and m.problems == []
    rec = m.by_id("v_HandStandPushups_g03_c02")
    assert (rec.path, rec.class_name, rec.label, rec.group) == \
        ("HandstandPushups/v_HandStandPushups_g03_c02.avi", "HandstandPushups", 1, 3)
    assert [(r.video_id, r.label, r.splits) for r in m.records] == \
        [(r.video_id, r.label, r.splits) for r in full.records]


def test_folders_without_split_files_take_the_class_from_ucf_names_or_class_folders(tmp_path):
    from data_manifest.build import build_from_folders

    found = {"v_HandStandPushups_g01_c01": None, "v_YoYo_g02_c03": None, "clip7": None}
    m = build_from_folders(found, where="frames/")
    assert m.dataset == "folder" and m.classes == ["HandstandPushups", "YoYo"] and m.num_splits == 0
    assert m.by_id("v_HandStandPushups_g01_c01").path == "HandstandPushups/v_HandStandPushups_g01_c01"
    assert m.problems == ["1 folders in frames/ have no known class and were left out: clip7"]
    m = build_from_folders({"a": "Jump", "b": "Cartwheel"})
    assert m.classes == ["Cartwheel", "Jump"] and m.by_id("a").path == "Jump/a" and m.by_id("a").label == 1
    with pytest.raises(ManifestError, match="no videos with a class found in x/ .*clip7"):
        build_from_folders({"clip7": None}, where="x/")


def test_folders_missing_from_the_split_files_are_an_error_unless_allowed(tmp_path):
    from data_manifest.build import build_from_folders

    tree = make_fake_hmdb51(tmp_path)
    found = {rel.split("/")[1][:-4]: rel.split("/")[0] for rel in tree.expected}
    gone = "Jim_Carrey_&_Ellen_chew_h_nm_np1_fr_goo_1"
    del found[gone]
    found["extra_chew_clip"] = "chew"  # in a known class folder, in no split file
    found["Chewing_Gum!_chew_h_nm_np1_fr_med_0"] = "cartwheel"  # in another class folder than listed
    with pytest.raises(ManifestError, match=r"1 of 9 videos named in the split files in .* have no frame folder "
                                            r"in f/: chew/Jim_Carrey_&_Ellen.*--allow-missing"):
        build_from_folders(found, tree.splits_dir, where="f/")
    m = build_from_folders(found, tree.splits_dir, allow_missing=True, where="f/")
    assert m.dataset == "hmdb51" and gone not in m and m.by_id("extra_chew_clip").splits == ("-",) * 3
    assert m.by_id("Chewing_Gum!_chew_h_nm_np1_fr_med_0").class_name == "chew"
    assert any("left out of the manifest" in p for p in m.problems)
    assert any("another class folder" in p and "cartwheel/Chewing_Gum!" in p for p in m.problems)
    assert any("in no split file" in p and "extra_chew_clip" in p for p in m.problems)
