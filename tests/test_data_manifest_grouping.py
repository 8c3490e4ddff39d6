"""Your own dataset: groups of videos that share footage, the split made when there are no split files, the
UCF101 split files written from it, and a validation hold-out that never splits a group."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from data_manifest import Manifest, ManifestError, build_manifest
from data_manifest.build import build
from data_manifest.cli import main
from data_manifest.grouping import NO_GROUPS, GroupRule, SplitRule, assign_groups
from tests.fake_datasets import make_fake_ucf101

RECORDINGS = {"Jump": 7, "Run": 6, "Wave": 4}  # recordings per class, each cut into CLIPS clips
CLIPS = 3
REGEX = r"^(.*)_clip[0-9]+$"


def _own_dataset(root: Path, names=None) -> Path:
    """Class folders of empty .mp4 files named <Class>_rec<R>_clip<C> (no split files)."""
    for cls, recordings in RECORDINGS.items():
        (root / cls).mkdir(parents=True)
        for r in range(recordings):
            for c in range(CLIPS):
                (root / cls / f"{cls}_rec{r}_clip{c}.mp4").write_bytes(b"")
    return root


def _recording(video_id: str) -> str:
    return re.fullmatch(REGEX, video_id).group(1)


def _sides(m: Manifest, k: int, key) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {}
    for r in m:
        sides.setdefault(key(r), set()).add(r.split(k))
    return sides


def test_generated_split_keeps_each_recording_on_one_side_and_is_stratified(tmp_path):
    m = build_manifest(_own_dataset(tmp_path / "d"), group_rule=GroupRule(REGEX))
    assert m.num_splits == 3 and m.group_rule == f"regex {REGEX!r} over the video name (17 groups)"
    assert m.split_method == (f"generated: stratified by class, each group on one side; 3 splits; test fraction "
                              f"0.3; seed 0; groups: {m.group_rule}")
    tested: list[set[str]] = []
    for k in (1, 2, 3):
        assert all(len(s) == 1 for s in _sides(m, k, lambda r: _recording(r.video_id)).values())
        # per class, the whole number of recordings nearest 30% (7 -> 2, 6 -> 2, 4 -> 1)
        test = Counter(r.class_name for r in m if r.split(k) == "test")
        assert test == {"Jump": 2 * CLIPS, "Run": 2 * CLIPS, "Wave": 1 * CLIPS}
        tested.append({_recording(r.video_id) for r in m if r.split(k) == "test"})
    assert not (tested[0] & tested[1]) and not (tested[0] & tested[2]) and not (tested[1] & tested[2])
    # the same input gives the same split; another seed another one
    assert build_manifest(tmp_path / "d", group_rule=GroupRule(REGEX)) == m
    other = build_manifest(tmp_path / "d", group_rule=GroupRule(REGEX), split_rule=SplitRule(seed=1))
    assert [r.splits for r in other] != [r.splits for r in m] and "seed 1" in other.split_method


def test_without_a_rule_each_video_is_its_own_group_and_the_summary_says_so(tmp_path):
    root = _own_dataset(tmp_path / "d")
    m = build_manifest(root)
    assert m.group_rule == NO_GROUPS and all(r.group is None for r in m)
    leaks = [g for g, s in _sides(m, 1, lambda r: _recording(r.video_id)).items() if len(s) > 1]
    assert leaks  # what the rule is for: without it, recordings straddle the split
    res = CliRunner().invoke(main, ["build", str(root), "--out", str(tmp_path / "m.tsv")])
    assert res.exit_code == 0, res.output
    assert f"groups: {NO_GROUPS}" in res.output and "inflates test accuracy; give --group-regex" in res.output
    assert "split:    generated: stratified by class" in res.output
    assert Manifest.read(tmp_path / "m.tsv") == m  # the method and the rule are recorded in the file


def test_ucf_group_tokens_are_used_without_split_files(tmp_path):
    tree = make_fake_ucf101(tmp_path / "u", groups=9)
    m = build_manifest(tree.video_dir, dataset="folder")  # the split files beside it ignored
    assert m.dataset == "folder" and m.group_rule == "the UCF101 name token _gNN_ (9 groups)"
    for k in (1, 2, 3):
        assert all(len(s) == 1 for s in _sides(m, k, lambda r: r.group).values())


def test_group_rule_errors_and_a_mixed_naming(tmp_path):
    with pytest.raises(ManifestError, match=r"--group-regex '\(' is not a regular expression"):
        assign_groups(["a"], GroupRule("("))
    with pytest.raises(ManifestError, match=r"1 of 2 video names do not match --group-regex .* \(e\.g\. odd\)"):
        assign_groups(["x_clip1", "odd"], GroupRule(REGEX))
    assert assign_groups(["v_A_g01_c01", "jump_g7", "x_g02_y_g3_c1", "big_g10x"]).groups == {
        "v_A_g01_c01": 1, "jump_g7": 7, "x_g02_y_g3_c1": 3, "big_g10x": None}  # the last token; 'g10x' is none
    mixed = assign_groups(["v_A_g01_c01", "plain"])
    assert mixed.groups == {"v_A_g01_c01": 1, "plain": None} and "1 of 2 video names carry" in mixed.note
    with pytest.raises(ManifestError, match="test fraction must be strictly between 0 and 1"):
        SplitRule(test_fraction=1.0)
    res = CliRunner().invoke(main, ["build", str(_own_dataset(tmp_path / "d")), "--group-regex", "(",
                                    "--out", str(tmp_path / "m.tsv")])
    assert res.exit_code == 1 and "not a regular expression" in res.output and "Traceback" not in res.output


def test_splits_command_writes_ucf101_files_that_read_back_to_the_same_split(tmp_path):
    root = _own_dataset(tmp_path / "d")
    out = tmp_path / "lists"
    res = CliRunner().invoke(main, ["splits", str(root), "--out", str(out), "--group-regex", REGEX])
    assert res.exit_code == 0, res.output
    assert "split:    generated: stratified by class" in res.output and f"--splits {out}" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["classInd.txt", "testlist01.txt", "testlist02.txt",
                                                     "testlist03.txt", "trainlist01.txt", "trainlist02.txt",
                                                     "trainlist03.txt"]
    raw = (out / "trainlist01.txt").read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") > 0 and b"Jump/Jump_rec" in raw
    assert (out / "classInd.txt").read_bytes() == b"1 Jump\r\n2 Run\r\n3 Wave\r\n"
    generated = build_manifest(root, group_rule=GroupRule(REGEX))
    edited, info = build(root, splits_dir=out)
    assert info.splits_dir == out and edited.split_method == ""
    assert [(r.video_id, r.label, r.splits) for r in edited] == [(r.video_id, r.label, r.splits) for r in generated]
    again = CliRunner().invoke(main, ["splits", str(root), "--out", str(out)])
    assert again.exit_code == 1 and "already holds split files" in again.output


def test_a_flat_folder_is_named_as_such(tmp_path):
    for i in range(30):
        (tmp_path / "flat" / f"clip{i:02d}.mp4").parent.mkdir(exist_ok=True)
        (tmp_path / "flat" / f"clip{i:02d}.mp4").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"30 videos lie directly in .*flat \(e\.g\. clip00\.mp4\): put them in "
                                            r"class folders \(.*flat/<Class>/<video>\)"):
        build_manifest(tmp_path / "flat")


def test_the_split_folder_beside_the_class_folders_is_not_a_class_folder(tmp_path):
    make_fake_ucf101(tmp_path, nested=False)  # ROOT/ucfTrainTestlist beside ROOT/<Class>
    m, info = build(tmp_path)
    assert m.dataset == "ucf101" and info.skipped == () and m.problems == []


def test_the_holdout_never_splits_a_group(tmp_path):
    # some videos with a group token, others without: each of those is its own group
    from data_manifest.manifest import VideoRecord

    recs = [VideoRecord(f"v_A_g{g:02d}_c{c}", f"A/v_A_g{g:02d}_c{c}.avi", "A", 0, g, ("train",))
            for g in range(1, 6) for c in range(4)]
    recs += [VideoRecord(f"solo{i}", f"A/solo{i}.avi", "A", 0, None, ("train",)) for i in range(6)]
    m = Manifest("folder", ["A"], recs)
    for seed in range(5):
        val = set(m.ids(1, "val", val_fraction=0.3, seed=seed))
        assert val and val != set(m.ids(1, "train"))
        for g in range(1, 6):
            members = {r.video_id for r in recs if r.group == g}
            assert members <= val or not (members & val)


def test_extract_records_the_generated_split_in_the_store_and_prints_it(tmp_path):
    from flowprep import FlowStore
    from flowprep.cli import main as flowprep_main
    from tests.videos import moving_video

    for cls, dx in (("Left", -1.0), ("Right", 1.0)):
        for r in range(4):
            for c in range(2):
                moving_video(tmp_path / "d" / cls / f"{cls}_rec{r}_clip{c}.avi", n=3, dx=dx, seed=r)
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(flowprep_main, ["extract", "--videos", str(tmp_path / "d"), "--out", str(out),
                                             "--size", "32x24", "--algo", "farneback", "--jobs", "1",
                                             "--no-progress", "--group-regex", REGEX])
    assert res.exit_code == 0, res.output
    assert "split: generated: stratified by class, each group on one side; 3 splits" in res.output
    with FlowStore(out) as store:
        m = store.manifest
    assert m.split_method.endswith(f"groups: regex {REGEX!r} over the video name (8 groups)")
    for k in (1, 2, 3):
        assert all(len(s) == 1 for s in _sides(m, k, lambda r: _recording(r.video_id)).values())
        assert Counter(r.class_name for r in m if r.split(k) == "test") == {"Left": 2, "Right": 2}


def test_extract_names_a_flat_folder(tmp_path):
    from flowprep.cli import main as flowprep_main

    (tmp_path / "flat").mkdir()
    for i in range(3):
        (tmp_path / "flat" / f"clip{i}.mp4").write_bytes(b"")
    res = CliRunner().invoke(flowprep_main, ["extract", "--videos", str(tmp_path / "flat"), "--out",
                                             str(tmp_path / "f.h5"), "--no-progress"])
    assert res.exit_code == 1 and "3 videos lie directly in" in res.output
    assert "put them in class folders" in res.output and "ROOT" not in res.output
