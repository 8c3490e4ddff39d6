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


def make_split(runs, split, n_test=30, n_val=12, seed=0, skip=()):
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
    assert "| weighted 2:1 |" in md and "mean top-1" in res.output


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
