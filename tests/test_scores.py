"""Score files: write/read round trip, what other tools may write within the format, and damaged files."""
import json
import warnings

import numpy as np
import pytest

from trainer.scores import ScoreFileError, read_scores, write_scores

V, F, K, C = 4, 2, 3, 3
IDS = [f"v_{i}" for i in range(V)]
NAMES = ["Jump", "Run", "Swim"]
LABELS = np.asarray([0, 2, 1, 2], dtype=np.int64)


def logits(seed=0, shape=(V, F, K, C)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def foreign(path, **over):
    """A score file as another tool might write it (plain np.savez); keyword arguments replace arrays."""
    arrays = dict(video_ids=np.asarray(IDS), labels=LABELS, logits=logits(), class_names=np.asarray(NAMES),
                  meta=np.asarray(json.dumps({"stream": "spatial", "split": 1, "subset": "test"})))
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def refused(path, *texts):
    with pytest.raises(ScoreFileError) as err:
        read_scores(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    for t in texts:
        assert t in msg, (t, msg)
    return msg


def test_round_trip(tmp_path):
    x = logits()
    write_scores(tmp_path / "s.npz", IDS, LABELS.tolist(), x, NAMES, {"stream": "spatial", "split": 1})
    s = read_scores(tmp_path / "s.npz")
    assert s.video_ids == IDS and s.class_names == NAMES and s.labels.dtype == np.int64
    assert s.labels.tolist() == LABELS.tolist() and np.array_equal(s.logits, x)
    assert s.meta["stream"] == "spatial" and s.meta["format"] == "twostream-scores/1"
    assert s.views_per_video == F * K and len(s.sha256) == 64


def test_files_of_the_old_writer_and_other_tools_still_read(tmp_path):
    # The format as written before these checks: str arrays, int64 labels, float32 logits, JSON meta string.
    s = read_scores(foreign(tmp_path / "old.npz"))
    assert s.video_ids == IDS and s.meta == {"stream": "spatial", "split": 1, "subset": "test"}
    # Within the format: other integer label dtypes, float64 or integer logits, UTF-8 bytes ids and names.
    s = read_scores(foreign(tmp_path / "other.npz", labels=LABELS.astype(np.uint8),
                            logits=logits().astype(np.float64), video_ids=np.asarray([v.encode() for v in IDS]),
                            class_names=np.asarray([n.encode() for n in NAMES]), meta=np.asarray(b"{}")))
    assert s.labels.dtype == np.int64 and s.logits.dtype == np.float32
    assert s.video_ids == IDS and s.class_names == NAMES and s.meta == {}
    s = read_scores(foreign(tmp_path / "int.npz", logits=np.ones((V, F, K, C), dtype=np.int16)))
    assert s.logits.dtype == np.float32


def test_a_file_with_no_videos_reads_and_fusion_names_it(tmp_path):
    from fusion.align import align
    from fusion.errors import CoverageError

    path = foreign(tmp_path / "empty.npz", video_ids=np.asarray([], dtype=str), labels=np.zeros(0, np.int64),
                   logits=np.zeros((0, F, K, C), np.float32))
    s = read_scores(path)
    assert s.num_videos == 0
    with pytest.raises(CoverageError, match=f"test scores of temporal \\({path}\\) hold no videos"):
        align([("temporal", s)])


@pytest.mark.parametrize("labels", [LABELS + 0.9, LABELS.astype(np.float64), LABELS.astype(str),
                                    LABELS.astype(bool)])
def test_non_integer_labels_are_refused(tmp_path, labels):
    refused(foreign(tmp_path / "lab.npz", labels=labels), "labels must be integer class indices",
            str(labels.dtype), "write them as int64")


@pytest.mark.parametrize("bad", ["bool", "complex", "str"])
def test_logits_must_be_real_numbers(tmp_path, bad):
    x = {"bool": logits() > 0, "complex": logits().astype(np.complex64) * 1j, "str": logits().astype(str)}[bad]
    refused(foreign(tmp_path / "x.npz", logits=x), "logits must be real numbers", str(x.dtype))


def test_non_finite_and_too_large_logits_name_the_videos(tmp_path):
    x = logits()
    x[2, 1, 0, 1] = np.nan
    refused(foreign(tmp_path / "nan.npz", logits=x), "NaN or infinite scores for 1 videos", "v_2")
    big = logits().astype(np.float64)
    big[3, 0, 0, 0] = 1e39  # finite in float64, inf once cast to float32
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "overflow encountered in cast" on the way
        msg = refused(foreign(tmp_path / "big.npz", logits=big), "too large for float32", "v_3")
    assert "NaN" not in msg


@pytest.mark.parametrize("key, value, text", [
    ("video_ids", np.asarray("v_0"), "video_ids must be a 1-d array of strings, got shape ()"),
    ("class_names", np.asarray("Jump"), "class_names must be a 1-d array of strings, got shape ()"),
    ("video_ids", np.arange(V), "video_ids must be strings, got dtype int64"),
    ("video_ids", np.asarray(IDS[:3]), "4 rows of logits but video_ids of shape (3,)"),
    ("class_names", np.asarray(["Jump", "Run", "Jump"]), "duplicate class names ['Jump']"),
    ("video_ids", np.asarray(["a", "b", "a", "c"]), "duplicate video ids ['a']"),
    ("labels", np.asarray([0, 1, 3, 0]), "labels must lie in [0, 3), got 0..3"),
    ("logits", np.zeros((V, F, K)), "logits must be (videos, frames, crops, classes)"),
    ("logits", np.zeros((V, 0, K, C)), "have no views or no classes"),
    ("meta", np.asarray("[1, 2]"), "meta must be a JSON object"),
    ("meta", np.asarray("3"), "meta must be a JSON object"),
    ("meta", np.asarray("{oops"), "meta is not valid JSON"),
    ("meta", np.asarray(["{}"]), "meta must be one JSON string"),
])
def test_malformed_arrays_are_named(tmp_path, key, value, text):
    refused(foreign(tmp_path / "bad.npz", **{key: value}), text)


def test_files_that_are_not_npz_archives(tmp_path):
    text = tmp_path / "t.npz"
    text.write_text("hello\n")
    assert "pickled" not in refused(text, "not an .npz score file (not a zip archive)")
    npy = tmp_path / "a.npz"
    with npy.open("wb") as f:
        np.save(f, np.zeros(3))
    assert "context manager" not in refused(npy, "not an .npz score file (a single .npy array)")
    empty = tmp_path / "e.npz"
    empty.write_bytes(b"")
    refused(empty, "an empty file")
    good = foreign(tmp_path / "good.npz")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:200])
    refused(cut, "damaged or truncated", "re-run `trainer test`")
    refused(tmp_path, "is a directory, not a score file")
    refused(tmp_path / "none.npz", "no such score file")


def test_writer_refuses_float_labels(tmp_path):
    with pytest.raises(ScoreFileError, match="labels must be integer"):
        write_scores(tmp_path / "w.npz", IDS, [0.0, 2.5, 1.0, 2.0], logits(), NAMES, {})
    assert not (tmp_path / "w.npz").exists()
