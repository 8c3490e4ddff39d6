"""`fusion report` end to end: score files in, numbers checked against a plain re-implementation, files out."""
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trainer.scores import write_scores

from fusion.cli import _join_weights, main

CLASSES = ["Archery", "Bowling", "Diving", "Fencing"]
FRAMES, CROPS = 3, 2
ROOT = Path(__file__).resolve().parents[1]


def make_split(runs, split, n_test=30, n_val=24, seed=0, skip=()):
    """Write spatial/temporal test and val score files of one split; returns {(stream, subset): arrays}."""
    rng = np.random.default_rng(seed + split)
    out = {}
    for subset, n, first in (("test", n_test, 0), ("val", n_val, 1000)):
        ids = [f"v_{CLASSES[i % 4]}_g{first + i:04d}_c01" for i in range(n)]
        labels = rng.integers(0, len(CLASSES), n)
        for stream, noise in (("spatial", 1.6), ("temporal", 1.2)):
            if (stream, subset) in skip:
                continue
            logits = rng.normal(0, noise, (n, FRAMES, CROPS, len(CLASSES))).astype(np.float32)
            logits[np.arange(n), :, :, labels] += 1.0
            write_scores(Path(runs) / f"{stream}-split{split}" / f"scores_{subset}.npz", ids, labels, logits,
                         CLASSES, {"stream": stream, "split": split, "subset": subset, "frames": FRAMES,
                                   "crops": CROPS, "crop_names": ["centre", "centre-flip"]})
            out[(stream, subset)] = (ids, labels, logits)
    return out


def plain_metrics(scores, labels):
    """Independent top-1 / top-k / mean class accuracy by loops over videos."""
    n, c = scores.shape
    top1 = sum(int(np.argmax(scores[i]) == labels[i]) for i in range(n)) / n
    k = min(5, c)
    topk = sum(int(labels[i] in sorted(range(c), key=lambda j: (-scores[i, j], j))[:k]) for i in range(n)) / n
    recalls = []
    for cls in sorted(set(labels.tolist())):
        members = [i for i in range(n) if labels[i] == cls]
        recalls.append(sum(int(np.argmax(scores[i]) == cls) for i in members) / len(members))
    return top1, topk, sum(recalls) / len(recalls)


def run(*args):
    result = CliRunner().invoke(main, ["report", *map(str, args)])
    return result


@pytest.fixture
def runs(tmp_path):
    data = {k: make_split(tmp_path / "runs", k) for k in (1, 2, 3)}
    return tmp_path / "runs", data


def by_key(report):
    return {r["key"]: r for r in report["results"]}


def test_report_numbers_match_an_independent_implementation(runs):
    root, data = runs
    res = run("--split", 1, "--runs", root)
    assert res.exit_code == 0, res.output
    out = root / "fusion-split1"
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "per_class.csv", "report.json", "report.md"]
    rep = json.loads((out / "report.json").read_text())
    rows = by_key(rep)
    assert list(rows) == ["spatial", "temporal", "average", "max", "confidence", "learned", "sweep"]
    _, labels, s_logits = data[1][("spatial", "test")]
    t_logits = data[1][("temporal", "test")][2]
    s, t = s_logits.mean(axis=(1, 2), dtype=np.float64), t_logits.mean(axis=(1, 2), dtype=np.float64)
    for key, scores in (("spatial", s), ("temporal", t), ("average", (s + t) / 2), ("max", np.maximum(s, t))):
        top1, topk, mca = plain_metrics(scores, labels)
        assert rows[key]["top1"] == pytest.approx(top1), key
        assert rows[key]["top5"] == pytest.approx(topk), key
        assert rows[key]["mean_class_accuracy"] == pytest.approx(mca), key
        lo, hi = rows[key]["top1_ci95"]
        assert lo <= top1 <= hi
    assert rows["spatial"]["videos"] == 30
    # Table on the console, in percent.
    assert "| method | top-1 | top-5 (= top-4: 4 classes) | mean class accuracy |" in res.output
    assert f"| spatial | {100 * rows['spatial']['top1']:.2f} |" in res.output
    assert "tuned on test (optimistic)" in res.output
    # Protocol and provenance.
    p = rep["protocol"]
    assert (p["frames"], p["crops"], p["aggregation"], p["top5_k"]) == (FRAMES, CROPS, "mean-logits", 4)
    assert p["crop_names"] == ["centre", "centre-flip"]
    files = {(f["stream"], f["subset"]): f for f in rep["score_files"] + rep["val_files"]}
    spatial_file = root / "spatial-split1" / "scores_test.npz"
    assert files[("spatial", "test")]["sha256"] == hashlib.sha256(spatial_file.read_bytes()).hexdigest()
    assert ("temporal", "val") in files
    # With validation scores and no --weights, the default fused method is the learned one.
    assert rep["default_method"] == "learned" and rows["learned"]["tuned_on"] == "val"
    assert rows["sweep"]["tuned_on"] == "test" and "optimistic" in rows["sweep"]["label"]


def test_per_class_csv_and_png(runs):
    root, data = runs
    assert run("--split", 1, "--runs", root).exit_code == 0
    out = root / "fusion-split1"
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class_name"] for r in rows] == CLASSES
    _, labels, logits = data[1][("spatial", "test")]
    preds = logits.mean(axis=(1, 2)).argmax(axis=1)
    for i, r in enumerate(rows):
        assert int(r["videos"]) == int((labels == i).sum())
        assert float(r["spatial"]) == pytest.approx((preds[labels == i] == i).mean(), abs=1e-6)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weights_two_numbers(runs):
    root, data = runs
    res = run("--split", 1, "--runs", root, "--weights", 2, 1)
    assert res.exit_code == 0, res.output
    assert "| weighted 2:1 |" in res.output
    rep = json.loads((root / "fusion-split1" / "report.json").read_text())
    row = by_key(rep)["weighted"]
    assert row["weights"] == pytest.approx([2 / 3, 1 / 3])
    assert rep["default_method"] == "weighted" and rep["protocol"]["weights_given"] == [2, 1]
    _, labels, s = data[1][("spatial", "test")]
    t = data[1][("temporal", "test")][2]
    fused = (2 * s.mean(axis=(1, 2), dtype=np.float64) + t.mean(axis=(1, 2), dtype=np.float64)) / 3
    assert row["top1"] == pytest.approx(plain_metrics(fused, labels)[0])


@pytest.mark.parametrize("args", [["--weights", "2"], ["--weights", "2", "1", "1"], ["--weights", "0", "0"],
                                  ["--weights", "a,b"]])
def test_bad_weights_are_usage_errors(runs, args):
    res = run("--split", 1, "--runs", runs[0], *args)
    assert res.exit_code == 2 and "--weights" in res.output


def test_join_weights_forms():
    assert _join_weights(["--weights", "2", "1", "--split", "1"]) == ["--weights", "2 1", "--split", "1"]
    assert _join_weights(["--split", "1", "--weights", "1.5", ".5"]) == ["--split", "1", "--weights", "1.5 .5"]
    assert _join_weights(["--weights=2", "1"]) == ["--weights=2 1"]
    assert _join_weights(["--weights", "2,1"]) == ["--weights", "2,1"]


def test_missing_score_files_are_named_with_the_fix(tmp_path):
    res = run("--split", 2, "--runs", tmp_path / "runs")
    assert res.exit_code == 1
    assert "spatial-split2/scores_test.npz: no such score file" in res.output
    assert "temporal-split2/scores_test.npz" in res.output and "trainer test" in res.output


def test_coverage_mismatch_fails_unless_allow_missing(tmp_path):
    root = tmp_path / "runs"
    make_split(root, 1)
    ids, labels, logits = make_split(tmp_path / "other", 1)[("temporal", "test")]
    keep = [i for i in range(30) if i not in (3, 7)]  # the temporal stream lost two videos
    write_scores(root / "temporal-split1" / "scores_test.npz", [ids[i] for i in keep], labels[keep],
                 logits[keep], CLASSES, {"stream": "temporal", "split": 1, "subset": "test"})
    res = run("--split", 1, "--runs", root)
    assert res.exit_code == 1
    assert "cover different videos" in res.output and "spatial 30" in res.output and "temporal 28" in res.output
    assert "2 missing from temporal" in res.output and "--allow-missing" in res.output
    assert not (root / "fusion-split1").exists()

    res = run("--split", 1, "--runs", root, "--allow-missing")
    assert res.exit_code == 0, res.output
    rep = json.loads((root / "fusion-split1" / "report.json").read_text())
    assert rep["coverage"]["dropped"] == sorted([ids[3], ids[7]])
    assert rep["coverage"]["missing_from"] == {"temporal": sorted([ids[3], ids[7]])}
    assert all(r["videos"] == 28 for r in rep["results"])
    md = (root / "fusion-split1" / "report.md").read_text()
    assert "## Dropped videos" in md and f"| {ids[3]} | temporal |" in md
    assert "dropped 2 test videos" in res.output


def test_nan_scores_are_rejected_with_file_and_video(runs, tmp_path):
    root, data = runs
    ids, labels, logits = data[1][("spatial", "test")]
    logits = logits.copy()
    logits[5, 1, 0, 2] = np.nan
    bad = tmp_path / "nan.npz"
    # write_scores refuses NaN, so build the damaged file the way a foreign tool might.
    np.savez(bad, video_ids=np.asarray(ids), labels=labels, logits=logits, class_names=np.asarray(CLASSES),
             meta=np.asarray(json.dumps({"stream": "spatial"})))
    res = run("--spatial", bad, "--temporal", root / "temporal-split1" / "scores_test.npz")
    assert res.exit_code == 1
    assert str(bad) in res.output and "NaN or infinite" in res.output and ids[5] in res.output


@pytest.mark.parametrize("damage", ["truncate", "text", "missing-key"])
def test_damaged_score_files_are_named(runs, tmp_path, damage):
    root, _ = runs
    good = root / "spatial-split1" / "scores_test.npz"
    bad = tmp_path / "bad.npz"
    if damage == "truncate":
        bad.write_bytes(good.read_bytes()[:200])
    elif damage == "text":
        bad.write_text("not a score file\n")
    else:
        np.savez(bad, video_ids=np.asarray(["a"]), labels=np.asarray([0]))
    res = run("--spatial", bad, "--temporal", root / "temporal-split1" / "scores_test.npz")
    assert res.exit_code == 1 and str(bad) in res.output and "Traceback" not in res.output


def test_named_streams_and_explicit_out(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "out"
    res = run("--scores", f"rgb={root / 'spatial-split1' / 'scores_test.npz'}",
              "--scores", f"flow={root / 'temporal-split1' / 'scores_test.npz'}",
              "--scores", f"flow2={root / 'temporal-split1' / 'scores_test.npz'}",
              "--weights", 1, 2, 3, "--out", out)
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["streams"] == ["rgb", "flow", "flow2"] and rep["split"] is None
    assert by_key(rep)["weighted"]["weights"] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    # scores_val.npz lies beside each file, so weights are learned for the named streams too.
    assert "learned" in by_key(rep)


def test_explicit_files_default_to_runs_fusion(runs, tmp_path, monkeypatch):
    root, _ = runs
    monkeypatch.chdir(tmp_path)
    res = run("--spatial", root / "spatial-split1" / "scores_test.npz",
              "--temporal", root / "temporal-split1" / "scores_test.npz")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "fusion" / "report.md").is_file()


def test_without_validation_scores_no_learned_row_and_sweep_labelled(tmp_path):
    root = tmp_path / "runs"
    make_split(root, 1, skip={("temporal", "val")})
    res = run("--split", 1, "--runs", root)
    assert res.exit_code == 0, res.output
    rep = json.loads((root / "fusion-split1" / "report.json").read_text())
    assert "learned" not in by_key(rep) and rep["default_method"] == "average"
    assert by_key(rep)["sweep"]["label"].startswith("tuned on test (optimistic)")
    assert any("no validation scores for temporal" in n for n in rep["notes"])


def test_validation_overlapping_test_is_refused(runs):
    root, _ = runs
    test = root / "spatial-split1" / "scores_test.npz"
    tflow = root / "temporal-split1" / "scores_test.npz"
    res = run("--split", 1, "--runs", root, "--spatial", test, "--temporal", tflow,
              "--val", f"spatial={root / 'spatial-split1' / 'scores_val.npz'}",
              "--val", f"temporal={root / 'temporal-split1' / 'scores_test.npz'}")
    assert res.exit_code == 1 and "never be tuned on test" in res.output


def test_validation_ids_overlapping_test_ids_are_refused(tmp_path):
    root = tmp_path / "runs"
    data = make_split(root, 1)
    for stream in ("spatial", "temporal"):  # val files holding test videos but claiming to be val
        ids, labels, logits = data[(stream, "test")]
        write_scores(root / f"{stream}-split1" / "scores_val.npz", ids[:5], labels[:5], logits[:5], CLASSES,
                     {"stream": stream, "split": 1, "subset": "val"})
    res = run("--split", 1, "--runs", root)
    assert res.exit_code == 1 and "5 videos are in both the validation and the test scores" in res.output


def test_swapped_streams_are_refused(runs):
    root, _ = runs
    res = run("--spatial", root / "temporal-split1" / "scores_test.npz",
              "--temporal", root / "spatial-split1" / "scores_test.npz")
    assert res.exit_code == 1 and "swapped" in res.output


def test_aggregation_choice_is_recorded_and_used(runs):
    root, data = runs
    res = run("--split", 1, "--runs", root, "--aggregate", "mean-softmax")
    assert res.exit_code == 0, res.output
    rep = json.loads((root / "fusion-split1" / "report.json").read_text())
    assert rep["protocol"]["aggregation"] == "mean-softmax"
    _, labels, logits = data[1][("spatial", "test")]
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (e / e.sum(axis=-1, keepdims=True)).mean(axis=(1, 2))
    assert by_key(rep)["spatial"]["top1"] == pytest.approx(plain_metrics(probs, labels)[0])
    assert "mean-softmax" in (root / "fusion-split1" / "report.md").read_text()


def test_split_all_summary(runs):
    root, _ = runs
    res = run("--split", "all", "--runs", root, "--weights", 2, 1)
    assert res.exit_code == 0, res.output
    summary = json.loads((root / "fusion-all" / "summary.json").read_text())
    per_split = [by_key(json.loads((root / f"fusion-split{k}" / "report.json").read_text())) for k in (1, 2, 3)]
    rows = {r["key"]: r for r in summary["results"]}
    for key in ("spatial", "temporal", "weighted", "learned"):
        assert rows[key]["mean"]["top1"] == pytest.approx(np.mean([s[key]["top1"] for s in per_split]))
    md = (root / "fusion-all" / "summary.md").read_text()
    assert "| method | split 1 top-1 | split 2 top-1 | split 3 top-1 | mean top-1 |" in md
    assert "| weighted 2:1 **(default)** |" in md and "mean top-1" in res.output
    assert "| learned on val |" in md  # not the default: --weights was given
    assert "Test videos per split: split 1: 30, split 2: 30, split 3: 30." in md
    assert summary["videos"] == {"1": 30, "2": 30, "3": 30}
    assert summary["default_method"] == {"1": "weighted", "2": "weighted", "3": "weighted"}
    assert rows["weighted"]["default_in"] == [1, 2, 3] and rows["learned"]["default_in"] == []


def test_split_all_refuses_explicit_files_and_names_missing_splits(runs, tmp_path):
    root, _ = runs
    res = run("--split", "all", "--runs", root, "--spatial", root / "spatial-split1" / "scores_test.npz")
    assert res.exit_code == 2
    partial = tmp_path / "partial"
    make_split(partial, 1)
    res = run("--split", "all", "--runs", partial)
    assert res.exit_code == 1 and "spatial-split2/scores_test.npz" in res.output
    assert "temporal-split3/scores_test.npz" in res.output


def test_import_is_light_and_module_runs():
    code = ("import sys, fusion.cli; bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT).returncode == 0
    res = subprocess.run([sys.executable, "-m", "fusion", "report", "--help"], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "--allow-missing" in res.stdout


# --- Bad inputs stop with a clean message (exit 1) naming the file; misuse exits 2. ---

def refused(res, *texts, code=1):
    """The command stopped with a click error (not an uncaught exception) whose output holds every text."""
    assert res.exit_code == code, res.output
    # CliRunner turns an uncaught exception into exit code 1 too; a click error is a SystemExit.
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    for t in texts:
        assert t in res.output, (t, res.output)


def foreign(path, n=6, **over):
    """A score file written as another tool might (plain np.savez); keyword arguments replace arrays."""
    rng = np.random.default_rng(len(str(path)))
    arrays = dict(video_ids=np.asarray([f"v{i}" for i in range(n)]), labels=np.arange(n) % len(CLASSES),
                  logits=rng.normal(size=(n, FRAMES, CROPS, len(CLASSES))).astype(np.float32),
                  class_names=np.asarray(CLASSES), meta=np.asarray("{}"))
    arrays.update(over)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("bad, text", [
    (dict(labels=np.arange(6) % 4 + 0.9), "labels must be integer class indices, got dtype float64"),
    (dict(labels=(np.arange(6) % 4).astype(str)), "labels must be integer class indices"),
    (dict(logits=np.zeros((6, FRAMES, CROPS, 4)).astype(str)), "logits must be real numbers"),
    (dict(logits=np.zeros((6, FRAMES, CROPS, 4), dtype=bool)),
     "logits must be real numbers (float or integer), got dtype bool"),
    (dict(logits=np.ones((6, FRAMES, CROPS, 4), dtype=np.complex64)),
     "logits must be real numbers (float or integer), got dtype complex64"),
    (dict(video_ids=np.asarray("v0")), "video_ids must be a 1-d array of strings"),
    (dict(class_names=np.asarray("Archery")), "class_names must be a 1-d array of strings"),
    (dict(class_names=np.asarray(["Archery", "Bowling", "Archery", "Fencing"])), "duplicate class names"),
    (dict(meta=np.asarray("[1, 2]")), "meta must be a JSON object"),
    (dict(meta=np.asarray("3")), "meta must be a JSON object"),
])
def test_malformed_score_files_fail_cleanly_naming_the_file(tmp_path, bad, text):
    good = foreign(tmp_path / "good.npz")
    res = run("--spatial", good, "--temporal", foreign(tmp_path / "bad.npz", **bad))
    refused(res, f"temporal: {tmp_path / 'bad.npz'}: {text}")


def test_score_file_without_videos_fails_cleanly(tmp_path):
    empty = foreign(tmp_path / "t0.npz", n=0, video_ids=np.asarray([], dtype=str))
    res = run("--spatial", foreign(tmp_path / "s.npz"), "--temporal", empty)
    refused(res, f"test scores of temporal ({empty}) hold no videos")


def test_bytes_class_names_are_decoded(tmp_path):
    names = np.asarray([c.encode() for c in CLASSES])
    res = run("--spatial", foreign(tmp_path / "s.npz"), "--temporal", foreign(tmp_path / "t.npz", class_names=names),
              "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["class_names"] == CLASSES


def test_misleading_reasons_are_replaced(tmp_path):
    good = foreign(tmp_path / "s.npz")
    text = tmp_path / "t.txt.npz"
    text.write_text("hello\n")
    refused(run("--spatial", good, "--temporal", text), f"{text}: not an .npz score file (not a zip archive)")
    npy = tmp_path / "t.npy.npz"
    with npy.open("wb") as f:
        np.save(f, np.zeros(3))
    refused(run("--spatial", good, "--temporal", npy), f"{npy}: not an .npz score file (a single .npy array)")
    x = np.random.default_rng(1).normal(size=(6, FRAMES, CROPS, 4))
    x[0, 0, 0, 0] = 1e39
    big = foreign(tmp_path / "big.npz", logits=x)
    res = run("--spatial", good, "--temporal", big)
    refused(res, f"{big}: scores too large for float32", "v0")
    assert "NaN" not in res.output


def test_validation_file_given_as_test_is_refused(runs):
    root, _ = runs
    val = root / "temporal-split1" / "scores_val.npz"
    res = run("--spatial", root / "spatial-split1" / "scores_test.npz", "--temporal", val)
    refused(res, f"{val}: given as the test scores of temporal but its meta says subset 'val'", "--val NAME=PATH")


def test_validation_of_another_split_is_refused(runs):
    root, _ = runs
    res = run("--spatial", root / "spatial-split1" / "scores_test.npz",
              "--temporal", root / "temporal-split1" / "scores_test.npz",
              "--val", f"spatial={root / 'spatial-split2' / 'scores_val.npz'}",
              "--val", f"temporal={root / 'temporal-split2' / 'scores_val.npz'}")
    refused(res, f"{root / 'spatial-split2' / 'scores_val.npz'}: validation scores of spatial say split 2 but "
                 "the test files say split 1")


def test_validation_with_other_view_counts_is_noted(runs, tmp_path):
    root, data = runs
    val = []
    for stream in ("spatial", "temporal"):
        ids, labels, logits = data[1][(stream, "val")]
        path = tmp_path / f"{stream}_val.npz"
        write_scores(path, ids, labels, logits[:, :1, :1], CLASSES, {"stream": stream, "split": 1, "subset": "val"})
        val += ["--val", f"{stream}={path}"]
    res = run("--split", 1, "--runs", root, "--out", tmp_path / "out", *val)
    assert res.exit_code == 0, res.output
    note = "validation scores have 1 frames x 1 crops"
    assert note in res.output and f"test scores {FRAMES} x {CROPS}" in res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sum(note in n for n in rep["notes"]) == 2
    assert note in (tmp_path / "out" / "report.md").read_text()


def test_exit_codes_follow_the_convention(runs, tmp_path):
    root, _ = runs
    s = root / "spatial-split1" / "scores_test.npz"
    refused(run("--spatial", s, "--temporal", tmp_path), f"{tmp_path}: is a directory, not a score file")
    refused(run("--scores", f"rgb={s}", "--weights", 1), "--weights needs at least two streams", code=2)
    refused(run("--scores", f"a={s}", "--scores", f"a={s}"), "stream name 'a' given more than once", code=2)
    refused(run("--spatial", s, "--scores", f"spatial={s}"), "stream name 'spatial' given more than once", code=2)


def test_same_file_for_two_streams_is_noted(runs, tmp_path):
    root, _ = runs
    s = root / "spatial-split1" / "scores_test.npz"
    res = run("--scores", f"a={s}", "--scores", f"b={s}", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert f"a and b are the same file ({s}" in res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("fusing a stream with itself" in n for n in rep["notes"])


def test_report_states_class_counts_and_labels_tuned_rows(tmp_path):
    n, classes = 24, [f"c{i}" for i in range(20)]
    labels = np.asarray([0, 3, 7, 11, 19, 3] * 4)  # 5 of the 20 classes have test videos
    rng = np.random.default_rng(3)
    paths = []
    for stream in ("spatial", "temporal"):
        paths.append(tmp_path / f"{stream}.npz")
        write_scores(paths[-1], [f"v{i}" for i in range(n)], labels, rng.normal(size=(n, 1, 1, 20)), classes,
                     {"stream": stream, "subset": "test"})
    res = run("--spatial", paths[0], "--temporal", paths[1], "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert "classes: 20 in the score files, 5 of them with test videos" in md
    assert "- Mean class accuracy: per-class recall" in md and "averaged over the classes that have test videos" in md
    assert "20 classes (5 with test videos)" in res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (rep["classes"], rep["classes_with_videos"], rep["fused"]) == (20, 5, True)
    # Only the methods in the table are described: no --weights, so no `weighted`.
    assert "`weighted`" not in md and "`average` is the plain mean" in md and "`confidence` weights" in md
    header = (tmp_path / "out" / "per_class.csv").read_text().splitlines()[0]
    assert header.endswith(",confidence,tuned_on_test_optimistic")

    res = run("--scores", f"rgb={paths[0]}", "--out", tmp_path / "one")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "one" / "report.md").read_text()
    assert "Default fused method" not in md and "One stream (rgb): nothing fused" in md
    assert "default fused method" not in res.output and "one stream (rgb): nothing fused" in res.output
    assert "Methods:" not in md
    assert json.loads((tmp_path / "one" / "report.json").read_text())["fused"] is False


def test_learned_column_name_in_per_class_csv(runs):
    root, _ = runs
    assert run("--split", 1, "--runs", root).exit_code == 0
    header = (root / "fusion-split1" / "per_class.csv").read_text().splitlines()[0].split(",")
    assert "learned_on_val" in header and "tuned_on_test_optimistic" in header
    assert "learned" not in header and "sweep" not in header


def test_allow_missing_lists_dropped_validation_ids(tmp_path):
    root = tmp_path / "runs"
    data = make_split(root, 1)
    ids, labels, logits = data[("temporal", "val")]
    write_scores(root / "temporal-split1" / "scores_val.npz", ids[1:], labels[1:], logits[1:], CLASSES,
                 {"stream": "temporal", "split": 1, "subset": "val"})
    res = run("--split", 1, "--runs", root, "--allow-missing")
    assert res.exit_code == 0, res.output
    assert f"dropped 1 validation videos not scored by every stream (1 missing from temporal): {ids[0]}" in res.output
    md = (root / "fusion-split1" / "report.md").read_text()
    assert "## Dropped validation videos (--allow-missing)" in md and f"| {ids[0]} | temporal |" in md
    rep = json.loads((root / "fusion-split1" / "report.json").read_text())
    assert rep["coverage"]["val_dropped"] == [ids[0]] and rep["coverage"]["val_missing_from"] == {"temporal": [ids[0]]}
    assert rep["coverage"]["dropped"] == [] and rep["learned"]["dropped"] == [ids[0]]


def test_console_lists_at_most_ten_dropped_ids(tmp_path):
    root = tmp_path / "runs"
    data = make_split(root, 1)
    ids, labels, logits = data[("temporal", "test")]
    write_scores(root / "temporal-split1" / "scores_test.npz", ids[12:], labels[12:], logits[12:], CLASSES,
                 {"stream": "temporal", "split": 1, "subset": "test"})
    res = run("--split", 1, "--runs", root, "--allow-missing")
    assert res.exit_code == 0, res.output
    assert ", ".join(sorted(ids[:12])[:10]) + " and 2 more" in res.output
    md = (root / "fusion-split1" / "report.md").read_text()
    assert all(f"| {v} | temporal |" in md for v in ids[:12])


def test_validation_and_test_scores_of_different_checkpoints_are_refused(runs, tmp_path):
    """Learned weights must come from the model they are applied to: a val file written from another
    checkpoint than the test file (e.g. `trainer test --checkpoint` of another run) is refused, while the same
    checkpoint in a runs folder moved elsewhere still matches."""
    root, data = runs
    paths = {}
    for subset, ckpt, epoch in (("test", "/cluster/a/runs/temporal-split1/checkpoint_best.pt", 12),
                                ("val", "/laptop/runs/temporal-split1/checkpoint_best.pt", 12),
                                ("val_other", "/laptop/runs_b/temporal-split1/checkpoint_best.pt", 2)):
        ids, labels, logits = data[1][("temporal", subset.split("_")[0])]
        paths[subset] = tmp_path / f"{subset}.npz"
        write_scores(paths[subset], ids, labels, logits, CLASSES,
                     {"stream": "temporal", "split": 1, "subset": subset.split("_")[0], "checkpoint": ckpt,
                      "checkpoint_epoch": epoch})
    moved = run("--scores", f"temporal={paths['test']}", "--val", f"temporal={paths['val']}",
                "--out", tmp_path / "moved")
    assert moved.exit_code == 0, moved.output
    res = run("--scores", f"temporal={paths['test']}", "--val", f"temporal={paths['val_other']}",
              "--out", tmp_path / "mixed")
    refused(res, f"temporal: the validation scores ({paths['val_other']}) come from checkpoint "
                 "/laptop/runs_b/temporal-split1/checkpoint_best.pt (epoch 2)", "--subset both")


def test_a_hold_out_too_small_to_choose_by_gives_fixed_weights(tmp_path):
    from data_manifest.holdout import MIN_HOLDOUT_VIDEOS

    make_split(tmp_path / "runs", 1, n_val=3)
    res = run("--split", 1, "--runs", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "runs" / "fusion-split1" / "report.json").read_text())
    assert "learned" not in by_key(rep) and rep["default_method"] == "average"
    why = (f"the hold-out of 3 videos (0.8 per class of 4) is too small to choose by: one video moves its top-1 "
           f"by 33 points; at least {MIN_HOLDOUT_VIDEOS} are needed")
    assert f"no learned weights: {why}; the default fused method is average (equal weights)" in res.output
    md = (tmp_path / "runs" / "fusion-split1" / "report.md").read_text()
    assert f"No `learned on val` row: {why}, so fixed weights are used" in md
    assert "(here averaged over 4 classes)" in md
    make_split(tmp_path / "few", 1, n_test=3, n_val=MIN_HOLDOUT_VIDEOS)  # 3 test videos: 3 of the 4 classes
    assert run("--split", 1, "--runs", tmp_path / "few").exit_code == 0
    md = (tmp_path / "few" / "fusion-split1" / "report.md").read_text()
    assert "(here averaged over 3 classes; 1 without test videos left out)" in md
    assert "learned" in by_key(json.loads((tmp_path / "few" / "fusion-split1" / "report.json").read_text()))
