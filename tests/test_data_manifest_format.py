"""Manifest and VideoRecord: validation, text round trip, file:line errors, queries and the validation hold-out."""
from __future__ import annotations

import hashlib
import math
import re

import pytest

from data_manifest import SPLIT_NONE, Manifest, ManifestError, VideoRecord, build_manifest
from data_manifest.errors import UnknownVideoError
from tests.fake_datasets import make_fake_hmdb51, make_fake_ucf101


@pytest.fixture
def ucf(tmp_path):
    make_fake_ucf101(tmp_path / "ucf", groups=10, clips=2)
    return build_manifest(tmp_path / "ucf")


@pytest.fixture
def hmdb(tmp_path):
    make_fake_hmdb51(tmp_path / "hmdb")
    return build_manifest(tmp_path / "hmdb")


def _rec(vid="a", cls="C", label=0, group=None, splits=("train",), path=None):
    return VideoRecord(video_id=vid, path=path or f"{cls}/{vid}.avi", class_name=cls, label=label, group=group,
                       splits=splits)


# -- round trip -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["ucf", "hmdb"])
def test_round_trip(which, request, tmp_path):
    m = request.getfixturevalue(which)
    text = m.to_text()
    assert Manifest.from_text(text) == m
    out = m.write(tmp_path / "out" / "x.manifest.tsv")
    assert Manifest.read(out) == m
    assert out.read_text(encoding="utf-8") == text
    assert [p.name for p in out.parent.iterdir()] == ["x.manifest.tsv"]  # no temp file left behind


def test_round_trip_keeps_problems_and_odd_names():
    recs = [_rec("x (1) & y!", "Odd Class", 1, None, ("test", "-")), _rec("b", "A", 0, 7, ("train", "unused"))]
    m = Manifest("folder", ["A", "Odd Class"], recs, problems=["line one\nline two", "plain"])
    back = Manifest.from_text(m.to_text())
    assert back == m
    assert back.problems == ["line one\\nline two", "plain"]  # line breaks folded, so each stays one line
    assert back.by_id("x (1) & y!").group is None and back.by_id("b").group == 7


def test_text_format_is_documented_shape(ucf):
    lines = ucf.to_text().split("\n")
    assert lines[:4] == ["# format: twostream-manifest/1", "# dataset: ucf101", "# splits: 3", "# classes: 3"]
    assert lines[4:7] == ["# class: ApplyEyeMakeup", "# class: HandstandPushups", "# class: YoYo"]
    assert lines[7] == "# group-rule: the UCF101 name token _gNN_ (10 groups)"  # no split-method: split files
    assert lines[8] == "video_id\tpath\tclass\tlabel\tgroup\tsplit1\tsplit2\tsplit3"
    assert lines[9] == ("v_ApplyEyeMakeup_g01_c01\tUCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\t"
                        "ApplyEyeMakeup\t0\t1\ttest\ttrain\ttrain")
    assert lines[-1] == "" and len(lines) == 9 + len(ucf) + 1


def test_split_method_and_group_rule_round_trip_and_are_checked():
    m = Manifest("folder", ["A"], [_rec("a", "A", 0, 3, ("test",))], split_method="generated: seed 4",
                 group_rule="regex 'x' over the video name (1 groups)")
    back = Manifest.from_text(m.to_text())
    assert back == m and (back.split_method, back.group_rule) == ("generated: seed 4",
                                                                  "regex 'x' over the video name (1 groups)")
    assert m.subset(["a"]).split_method == "generated: seed 4"
    assert m != Manifest("folder", ["A"], m.records, split_method="generated: seed 5", group_rule=m.group_rule)
    twice = m.to_text().replace("# group-rule:", "# split-method: again\n# group-rule:")
    with pytest.raises(ManifestError, match=r"m.tsv:\d+: header key 'split-method' repeated"):
        Manifest.from_text(twice, source="m.tsv")
    with pytest.raises(ManifestError, match="split_method must be one line"):
        Manifest("folder", ["A"], [], split_method="a\nb")


def test_empty_manifest_round_trips():
    m = Manifest("folder", ["A"], [], num_splits=2)
    assert Manifest.from_text(m.to_text()) == m and m.num_splits == 2


def test_equality_sees_every_field(ucf):
    assert ucf != Manifest("hmdb51", ucf.classes, ucf.records, ucf.problems)
    assert ucf != Manifest(ucf.dataset, ucf.classes, ucf.records, ["x"])
    assert ucf != ucf.subset(ucf.ids(1, "test"))


# -- malformed text: source:line and what was expected ------------------------------------------------------------

BAD_TEXT = [
    (1, "# format: twostream-manifest/9", "not a manifest"),
    (2, "# dataset ucf101", "expected a header line '# key: value'"),
    (2, "# colour: blue", "unknown header key 'colour'"),
    (3, "# splits: three", "whole number"),
    (4, "# classes: 4", "'# classes: 4' but the file has 3"),
    (8, "video_id\tpath\tclass\tlabel\tgroup\tsplit1\tsplit2", "expected the column header"),
    (9, "v_a\tA/v_a.avi\tApplyEyeMakeup\t0\t1\ttest\ttrain", "expected 8 tab-separated fields"),
    (9, "v_ApplyEyeMakeup_g01_c01\tUCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\tApplyEyeMakeup\tx\t1\ttest"
        "\ttrain\ttrain", "label must be a whole number"),
    (9, "v_ApplyEyeMakeup_g01_c01\tUCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\tYoYo\t0\t1\ttest\ttrain"
        "\ttrain", "disagree with the '# class:' lines"),
    (9, "v_ApplyEyeMakeup_g01_c01\tUCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\tApplyEyeMakeup\t0\tg1\ttest"
        "\ttrain\ttrain", "group must be a whole number or '-'"),
    (9, "v_ApplyEyeMakeup_g01_c01\tUCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\tApplyEyeMakeup\t0\t1\tval"
        "\ttrain\ttrain", "split membership must be one of"),
    (9, "v_other\tUCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\tApplyEyeMakeup\t0\t1\ttest\ttrain\ttrain",
     "must be the file stem"),
    (10, "v_ApplyEyeMakeup_g01_c01\tUCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\tApplyEyeMakeup\t0\t1\t"
         "test\ttrain\ttrain", "duplicate video id 'v_ApplyEyeMakeup_g01_c01' (first on line 9)"),
    (9, "# class: Late", "expected 8 tab-separated fields"),  # no header lines after the column header
]


@pytest.mark.parametrize("line_no, text, message", BAD_TEXT)
def test_malformed_manifest_names_source_and_line(ucf, line_no, text, message):
    lines = [line for line in ucf.to_text().split("\n") if not line.startswith("# group-rule:")]
    lines[line_no - 1] = text
    with pytest.raises(ManifestError, match=re.escape(message)) as err:
        Manifest.from_text("\n".join(lines), source="m.tsv")
    assert str(err.value).startswith(f"m.tsv:{line_no}:")


def test_missing_parts_of_a_manifest(ucf, tmp_path):
    text = ucf.to_text()
    with pytest.raises(ManifestError, match="column header line .* is missing"):
        Manifest.from_text(text.split("video_id\t")[0], source="m.tsv")
    with pytest.raises(ManifestError, match=r"m.tsv:1: not a manifest: .*an empty file"):
        Manifest.from_text("", source="m.tsv")
    with pytest.raises(ManifestError, match="not found"):
        Manifest.read(tmp_path / "none.tsv")
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ManifestError, match="not UTF-8"):
        Manifest.read(tmp_path / "bin.tsv")
    # a manifest saved with Windows line ends still reads
    assert Manifest.from_text(text.replace("\n", "\r\n")) == ucf


# -- record and manifest validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(vid="a\tb", path="C/a\tb.avi"), "tab or line break"),
    (dict(cls="C\nD", path="x/a.avi"), "tab or line break"),
    (dict(path="/abs/a.avi"), "normalised relative POSIX path"),
    (dict(path="../C/a.avi"), "normalised relative POSIX path"),
    (dict(path="C//a.avi"), "normalised relative POSIX path"),
    (dict(label=-1), "label must be an int >= 0"),
    (dict(label=True), "label must be an int >= 0"),
    (dict(group="3"), "group must be None or an int"),
    (dict(splits=("train", "validation")), "split membership"),
    (dict(vid=""), "non-empty string"),
])
def test_record_validation(kwargs, message):
    with pytest.raises(ManifestError, match=re.escape(message)):
        _rec(**kwargs)


def test_manifest_validation():
    with pytest.raises(ManifestError, match=r"duplicate video id 'a': A/a\.avi and B/a\.mp4"):
        Manifest("folder", ["A", "B"], [_rec("a", "A", 0), _rec("a", "B", 1, path="B/a.mp4")])
    with pytest.raises(ManifestError, match="disagree with the class list"):
        Manifest("folder", ["A", "B"], [_rec("a", "B", 0)])
    with pytest.raises(ManifestError, match="has 2 split entries"):
        Manifest("folder", ["A"], [_rec("a", "A", 0), _rec("b", "A", 0, splits=("train", "test"))])
    with pytest.raises(ManifestError, match="appears twice"):
        Manifest("folder", ["A", "A"], [])
    m = Manifest("folder", ["A"], [_rec("b", "A"), _rec("a", "A")])
    assert [r.video_id for r in m.records] == ["a", "b"]  # sorted by path
    m.records.clear()  # the lists handed out are copies
    assert len(m) == 2


# -- queries -------------------------------------------------------------------------------------------------------

def test_ids_and_by_id(ucf, hmdb):
    train, test = ucf.ids(1, "train"), ucf.ids(1, "test")
    assert len(train) + len(test) == len(ucf) and not set(train) & set(test)
    assert ucf.ids(subset="all") == [r.video_id for r in ucf.records]
    assert len(hmdb.ids(2, "unused")) == 3
    assert ucf.by_id(train[0]).splits[0] == "train"
    with pytest.raises(KeyError):
        ucf.by_id("v_nope")
    with pytest.raises(UnknownVideoError, match="'v_nope' is not in this ucf101 manifest"):
        ucf.by_id("v_nope")
    with pytest.raises(ManifestError, match="split must be between 1 and 3, got 4"):
        ucf.ids(4, "train")
    with pytest.raises(ManifestError, match="unknown subset 'validation'"):
        ucf.ids(1, "validation")
    with pytest.raises(ManifestError, match="val_fraction must be"):
        ucf.ids(1, "val", val_fraction=1.5)


def test_subset_for_sharding(ucf):
    ids = ucf.ids(2, "test")
    part = ucf.subset(ids + ids[:1])
    assert part.ids(subset="all") == ids and part.classes == ucf.classes and part.dataset == "ucf101"
    assert Manifest.from_text(part.to_text()) == part
    with pytest.raises(UnknownVideoError, match="1 video ids are not in"):
        ucf.subset(["v_unknown"])


# -- validation hold-out -------------------------------------------------------------------------------------------

def _expected_val_groups(train_groups, split, fraction=0.1, seed=0):
    """The documented rule, written out independently of the library."""
    ranked = sorted(train_groups, key=lambda g: hashlib.sha256(f"{seed}/{split}/g{g}".encode()).hexdigest())
    n = min(len(ranked) - 1, max(1, math.floor(fraction * len(ranked) + 0.5)))
    return set(ranked[:n])


@pytest.mark.parametrize("split", [1, 2, 3])
def test_holdout_by_group_from_train_only(ucf, split):
    train, test = set(ucf.ids(split, "train")), set(ucf.ids(split, "test"))
    val, rest = ucf.ids(split, "val"), ucf.ids(split, "train-minus-val")
    assert set(val) | set(rest) == train and not set(val) & set(rest)
    assert not set(val) & test
    train_groups = {ucf.by_id(v).group for v in train}
    val_groups = {ucf.by_id(v).group for v in val}
    assert val_groups == _expected_val_groups(train_groups, split)
    assert len(val_groups) == 1  # round(0.1 * 6 train groups) = 1
    # the same group numbers in every class, and whole groups
    for cls in range(len(ucf.classes)):
        assert {ucf.by_id(v).group for v in val if ucf.by_id(v).label == cls} == val_groups
    assert not val_groups & {ucf.by_id(v).group for v in rest}


def test_the_old_subset_name_train_val_is_refused_naming_the_new_one(ucf):
    """'train-val' meant train minus val, the opposite of the common 'trainval': neither name is read silently."""
    with pytest.raises(ManifestError) as old:
        ucf.ids(1, "train-val")
    message = str(old.value)
    assert message.startswith("subset 'train-val' was renamed 'train-minus-val': it is the train list minus the "
                              "validation hold-out")
    assert "'trainval' means train plus val" in message and "subset='train'" in message
    with pytest.raises(ManifestError, match=r"unknown subset 'trainval': .*subset='train'"):
        ucf.ids(1, "trainval")
    with pytest.raises(ManifestError, match=r"unknown subset 'tran'; choose one of .*train-minus-val"):
        ucf.ids(1, "tran")


def test_holdout_is_deterministic_and_seeded(ucf, tmp_path):
    again = Manifest.from_text(ucf.to_text())
    assert again.ids(1, "val") == ucf.ids(1, "val")
    assert ucf.ids(1, "val", seed=0) == ucf.ids(1, "val")
    by_seed = {tuple(ucf.ids(1, "val", seed=s)) for s in range(10)}
    assert len(by_seed) > 1
    bigger = ucf.ids(1, "val", val_fraction=0.5)
    assert len({ucf.by_id(v).group for v in bigger}) == 3
    # however large the fraction, one train group stays for training
    assert len({ucf.by_id(v).group for v in ucf.ids(1, "train-minus-val", val_fraction=0.99)}) == 1


def test_holdout_without_groups_is_per_class(hmdb, tmp_path):
    # the default fake HMDB51 has one train video per class and split: holding one out would empty the class
    assert hmdb.ids(1, "val") == [] and hmdb.ids(1, "train-minus-val") == hmdb.ids(1, "train")
    videos = {c: tuple(f"{c}_clip!_{i}.avi" for i in range(6)) for c in ("jump", "run")}
    make_fake_hmdb51(tmp_path / "six", videos=videos)
    m = build_manifest(tmp_path / "six")
    for split in (1, 2, 3):
        val = m.ids(split, "val")
        assert set(val) <= set(m.ids(split, "train"))
        assert sorted(m.by_id(v).label for v in val) == [0, 1]  # one of each class's two train videos


def test_holdout_hash_fallback_rule():
    recs = [_rec(f"v{c}_{i}", f"C{c}", c, None, ("train",)) for c in range(2) for i in range(10)]
    m = Manifest("folder", ["C0", "C1"], recs)
    val = m.ids(1, "val", val_fraction=0.2, seed=3)
    for c in range(2):
        ids = [f"v{c}_{i}" for i in range(10)]
        want = sorted(ids, key=lambda v: hashlib.sha256(f"3/1/{v}".encode()).hexdigest())[:2]
        assert sorted(v for v in val if v.startswith(f"v{c}_")) == sorted(want)
    assert set(m.ids(1, "train-minus-val", val_fraction=0.2, seed=3)) == {r.video_id for r in recs} - set(val)
    single_group = Manifest("folder", ["C0"], [_rec(f"x{i}", "C0", 0, 5, ("train",)) for i in range(4)])
    assert len(single_group.ids(1, "val", val_fraction=0.5)) == 2  # one group: falls back to per video
    assert SPLIT_NONE == "-"
