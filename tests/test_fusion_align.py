"""Coverage checks between streams and the checks on score file meta."""
import numpy as np
import pytest

from trainer.scores import Scores

from fusion import inputs
from fusion.align import align
from fusion.errors import CoverageError, InputError

CLASSES = ["Jump", "Run", "Swim"]


def scores(ids, labels, frames=2, crops=1, classes=CLASSES, fill=0.0, meta=None, path="x.npz"):
    logits = np.full((len(ids), frames, crops, len(classes)), fill, dtype=np.float32)
    return Scores(video_ids=list(ids), labels=np.asarray(labels, dtype=np.int64), logits=logits,
                  class_names=list(classes), meta=meta or {}, path=path)


def test_aligns_streams_in_first_stream_order():
    a = scores(["v1", "v2", "v3"], [0, 1, 2])
    b = scores(["v3", "v1", "v2"], [2, 0, 1])
    b.logits[:, 0, 0, 0] = [3, 1, 2]  # marks each video of b
    al = align([("spatial", a), ("temporal", b)])
    assert al.video_ids == ["v1", "v2", "v3"]
    assert al.labels.tolist() == [0, 1, 2]
    assert al.logits[1][:, 0, 0, 0].tolist() == [1, 2, 3]
    assert al.dropped == [] and al.missing_from == {}
    assert (al.frames, al.crops) == (2, 1)


def test_different_videos_fail_with_counts():
    a = scores(["v1", "v2", "v3", "v4"], [0, 1, 2, 0], path="rgb.npz")
    b = scores(["v1", "v2", "v5"], [0, 1, 2], path="flow.npz")
    with pytest.raises(CoverageError) as err:
        align([("spatial", a), ("temporal", b)])
    msg = str(err.value)
    assert "spatial 4 (rgb.npz)" in msg and "temporal 3 (flow.npz)" in msg
    assert "2 missing from temporal (e.g. v3, v4)" in msg and "1 missing from spatial (e.g. v5)" in msg
    assert "2 in every stream" in msg and "--allow-missing" in msg


def test_allow_missing_keeps_common_videos_and_reports_the_rest():
    a = scores(["v1", "v2", "v3", "v4"], [0, 1, 2, 0])
    b = scores(["v1", "v2", "v5"], [0, 1, 2])
    al = align([("spatial", a), ("temporal", b)], allow_missing=True)
    assert al.video_ids == ["v1", "v2"]
    assert al.dropped == ["v3", "v4", "v5"]
    assert al.missing_from == {"spatial": ["v5"], "temporal": ["v3", "v4"]}
    assert [x.shape[0] for x in al.logits] == [2, 2]


def test_allow_missing_with_nothing_in_common_fails():
    with pytest.raises(CoverageError, match="share no video ids"):
        align([("a", scores(["v1"], [0])), ("b", scores(["v2"], [0]))], allow_missing=True)


def test_label_disagreement_fails_even_with_allow_missing():
    a = scores(["v1", "v2"], [0, 1])
    b = scores(["v1", "v2"], [0, 2])
    with pytest.raises(CoverageError, match=r"labels of 1 videos.*v2 \(Run vs Swim\)"):
        align([("spatial", a), ("temporal", b)], allow_missing=True)


def test_view_count_mismatch_fails():
    a = scores(["v1"], [0], frames=25, crops=10)
    b = scores(["v1"], [0], frames=19, crops=10)
    with pytest.raises(CoverageError, match="spatial 25 frames x 10 crops.*temporal 19 frames x 10 crops"):
        align([("spatial", a), ("temporal", b)])


def test_class_list_mismatch_fails():
    a = scores(["v1"], [0])
    b = scores(["v1"], [0], classes=["Jump", "Swim", "Run"])
    with pytest.raises(CoverageError, match="class 1 is 'Run' in spatial but 'Swim' in temporal"):
        align([("spatial", a), ("temporal", b)])
    with pytest.raises(CoverageError, match="3 classes in spatial, 2 in temporal"):
        align([("spatial", a), ("temporal", scores(["v1"], [0], classes=["Jump", "Run"]))])


def test_non_finite_and_empty_streams_are_rejected():
    bad = scores(["v1", "v2"], [0, 1])
    bad.logits[1, 0, 0, 2] = np.inf
    with pytest.raises(CoverageError, match=r"x.npz\): NaN or infinite scores for 1 videos: v2"):
        align([("spatial", bad)])
    with pytest.raises(CoverageError, match="hold no videos"):
        align([("spatial", scores([], []))])


def test_meta_swapped_streams_and_split_checks():
    spatial = scores(["v1"], [0], meta={"stream": "temporal", "split": 1}, path="t.npz")
    with pytest.raises(InputError, match="t.npz: given as the spatial stream.*swapped"):
        inputs.check_meta([("spatial", spatial)], "test", 1)
    a = scores(["v1"], [0], meta={"stream": "spatial", "split": 1})
    b = scores(["v1"], [0], meta={"stream": "temporal", "split": 2})
    with pytest.raises(InputError, match="different splits: spatial split 1, temporal split 2"):
        inputs.check_meta([("spatial", a), ("temporal", b)], "test", None)
    with pytest.raises(InputError, match="asked for split 3"):
        inputs.check_meta([("spatial", a)], "test", 3)
    # A file recording nothing is not checked; an unknown stream name is only a note.
    assert inputs.check_meta([("spatial", scores(["v1"], [0]))], "test", 1) == []
    notes = inputs.check_meta([("rgb", a)], "test", 1)
    assert len(notes) == 1 and "says stream 'spatial'" in notes[0]


def test_test_file_given_as_validation_is_refused():
    t = scores(["v1"], [0], meta={"subset": "test"})
    with pytest.raises(InputError, match="never be tuned on test"):
        inputs.check_meta([("spatial", t)], "val", None)


def test_default_and_val_paths():
    paths = inputs.default_paths("runs", 2)
    assert [str(p) for _, p in paths] == ["runs/spatial-split2/scores_test.npz",
                                          "runs/temporal-split2/scores_test.npz"]
    assert str(inputs.val_path_for("a/scores_test.npz")) == "a/scores_val.npz"
    assert str(inputs.val_path_for("a/scores_test_ema.npz")) == "a/scores_val_ema.npz"
    assert inputs.val_path_for("a/rgb.npz") is None


def test_load_names_every_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        inputs.load([("spatial", tmp_path / "a.npz"), ("temporal", tmp_path / "b.npz")],
                    lambda n: f"run trainer test for {n}")
    msg = str(err.value)
    assert "a.npz: no such score file (spatial); run trainer test for spatial" in msg
    assert "b.npz: no such score file (temporal)" in msg
