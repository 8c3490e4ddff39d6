"""`fusion predict` on the synthetic store's tiny models: the test videos, read from their files, get the
test protocol's scores and `fusion report`'s fused prediction; new videos (in no store), short ones, damaged
files, checkpoints without flow settings, and the settings round trip flowprep records and predict reads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusion.cli import main as fusion_main
from trainer.cli import main as trainer_main
from trainer.scores import read_scores

# device=cpu: the exactness checks compare fp32 CPU logits (on a GPU machine, auto would test in bf16)
TINY = ["device=cpu", "arch=resnet18", "pretrained=none", "input_size=32", "flow_length=3", "scales=[1.0,0.75]", "batch_size=4",
        "schedule=step", "epochs=1", "lr=0.01", "workers=0", "val_frames=1", "test_frames=2", "test_crops=10"]
SCORE_ATOL = 1e-5  # float32 logits of one video alone vs in a batch of many: observed 7e-8


@pytest.fixture(scope="module")
def trained(synth_store, tmp_path_factory):
    """Both streams trained for one epoch on the synthetic store, tested, and fused by `fusion report`."""
    runs = tmp_path_factory.mktemp("predict") / "runs"
    for stream in ("spatial", "temporal"):
        args = ["run", stream, "--data", str(synth_store), "--out", str(runs), "--no-progress"]
        for item in TINY:
            args += ["--set", item]
        result = CliRunner().invoke(trainer_main, args)
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(fusion_main, ["report", "--split", "1", "--runs", str(runs), "--bootstrap", "10"])
    assert result.exit_code == 0, result.output
    return runs


def _video_path(store, video_id: str) -> Path:
    from flowprep import FlowStore

    with FlowStore(store) as s:
        return Path(store).parent / "synth" / s.record(video_id)["path"]


def _predict(*args):
    """`fusion predict ARGS` (on the CPU unless ARGS name a --device)."""
    args = [str(a) for a in args]
    return CliRunner().invoke(fusion_main, ["predict", *args, *([] if "--device" in args else ["--device", "cpu"])])


def _scores(result_json: dict) -> list[dict[str, float]]:
    return [{t["class"]: t["score"] for t in v["top"]} for v in result_json["videos"]]


def _write_avi(path: Path, frames: np.ndarray) -> Path:
    """(T, H, W, 3) uint8 BGR as an MJPG AVI."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, frames.shape[2:0:-1])
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def _new_video(path: Path, name: str = "DriftLeft", frames: int = 12, seed: int = 99) -> Path:
    from data_manifest.synth import render_video

    return _write_avi(path, render_video(name, np.random.default_rng(seed), frames, (80, 60)))


def test_test_videos_get_the_test_protocol_scores_and_the_reports_fusion(trained, synth_store, tmp_path):
    spatial = read_scores(trained / "spatial-split1" / "scores_test.npz")
    temporal = read_scores(trained / "temporal-split1" / "scores_test.npz")
    report = json.loads((trained / "fusion-split1" / "report.json").read_text())
    # the synthetic hold-out is smaller than MIN_HOLDOUT_VIDEOS, so the report chose fixed weights
    assert report["default_method"] == "average"
    weights = report["protocol"]["weights"]["average"]
    videos = [_video_path(synth_store, v) for v in spatial.video_ids]
    out = tmp_path / "p.json"
    result = _predict(*videos, "--runs", trained, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [v["path"] for v in data["videos"]] == [str(v) for v in videos]
    assert data["fusion"]["method"] == "average" and data["views"] == {"spatial": [2, 10], "temporal": [2, 10]}
    for i, (video, got) in enumerate(zip(data["videos"], _scores(data))):
        # fusion report's average row: weights x (mean logits over the 2 x 10 views) per stream
        want = weights[0] * spatial.logits[i].mean(axis=(0, 1)) + weights[1] * temporal.logits[i].mean(axis=(0, 1))
        assert video["error"] is None and video["streams"] == ["spatial", "temporal"]
        assert video["prediction"] == spatial.class_names[int(np.argmax(want))]
        assert len(video["top"]) == 4  # 4 classes: top-5 holds them all, best first
        np.testing.assert_allclose([got[c] for c in spatial.class_names], want, atol=SCORE_ATOL)
        assert [t["score"] for t in video["top"]] == sorted(got.values(), reverse=True)
        assert set(video["seconds"]) >= {"decode", "flow", "spatial", "temporal", "fusion", "total"}
    assert "time (s): decode" in result.output and "temporal" in result.output


def test_a_method_given_on_the_command_line_replaces_the_reports(trained, synth_store, tmp_path):
    spatial = read_scores(trained / "spatial-split1" / "scores_test.npz")
    temporal = read_scores(trained / "temporal-split1" / "scores_test.npz")
    out = tmp_path / "p.json"
    video = _video_path(synth_store, spatial.video_ids[0])
    result = _predict(video, "--runs", trained, "--method", "weighted", "--weights", "3", "1", "--json", out)
    assert result.exit_code == 0, result.output
    want = 0.75 * spatial.logits[0].mean(axis=(0, 1)) + 0.25 * temporal.logits[0].mean(axis=(0, 1))
    got = _scores(json.loads(out.read_text()))[0]
    np.testing.assert_allclose([got[c] for c in spatial.class_names], want, atol=SCORE_ATOL)
    assert "fusion: weighted weights 3:1" in result.output
    bad = _predict(video, "--runs", trained, "--method", "weighted")
    assert bad.exit_code == 1 and "--method weighted needs weights" in bad.output
    implied = _predict(video, "--runs", trained, "--weights", "3", "1", "--json", out)
    assert implied.exit_code == 0 and "fusion: weighted weights 3:1" in implied.output
    np.testing.assert_allclose([_scores(json.loads(out.read_text()))[0][c] for c in spatial.class_names], want,
                               atol=SCORE_ATOL)
    mixed = _predict(video, "--runs", trained, "--weights", "3", "1", "--method", "max")
    assert mixed.exit_code == 1 and "--weights go with --method weighted, not max" in mixed.output


def test_without_a_report_the_default_method_is_used_and_said(trained, synth_store, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs, ignore=shutil.ignore_patterns("fusion-split1"))
    video = _video_path(synth_store, read_scores(runs / "temporal-split1" / "scores_test.npz").video_ids[0])
    result = _predict(video, "--runs", runs, "--views", "fast")
    assert result.exit_code == 0, result.output
    assert f"no fusion report at {runs / 'fusion-split1' / 'report.json'}: fusing with `average`" in result.output
    assert "(resnet18, 5 stacks x 1 crops)" in result.output
    missing = _predict(video, "--runs", runs, "--report", runs / "nope.json")
    assert missing.exit_code == 1 and f"--report {runs / 'nope.json'}: no such file" in missing.output


def test_a_report_made_from_other_checkpoints_is_noted(trained, synth_store, tmp_path):
    report = json.loads((trained / "fusion-split1" / "report.json").read_text())
    for f in report["score_files"]:
        f["meta"]["checkpoint"] = f"/elsewhere/old/{f['stream']}-split1/checkpoint_best.pt"
    (tmp_path / "report.json").write_text(json.dumps(report))
    video = _video_path(synth_store, read_scores(trained / "temporal-split1" / "scores_test.npz").video_ids[0])
    result = _predict(video, "--runs", trained, "--report", tmp_path / "report.json", "--views", "1x1")
    assert result.exit_code == 0, result.output
    assert "was made from the scores of /elsewhere/old/spatial-split1/checkpoint_best.pt" in result.output
    assert f"(chosen by {tmp_path / 'report.json'})" in result.output


def test_a_new_video_in_no_store_a_short_one_and_a_folder(trained, tmp_path):
    folder = tmp_path / "new"
    (folder / "sub").mkdir(parents=True)
    _new_video(folder / "a.avi")
    _new_video(folder / "sub" / "short.avi", frames=3)  # 2 flow fields: fewer than a stack of 3
    (folder / "notes.txt").write_text("not a video")
    one = tmp_path / "one_frame.avi"
    _new_video(one, frames=1)
    out = tmp_path / "p.json"
    result = _predict(folder, one, folder / "a.avi", "--runs", trained, "--json", out, "--views", "1x1",
                      "--show", tmp_path / "pics")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["a.png", "one_frame.png", "short.png"]
    videos = {Path(v["path"]).name: v for v in json.loads(out.read_text())["videos"]}
    # the folder's videos (sorted), then the file; a.avi once
    assert list(videos) == ["a.avi", "short.avi", "one_frame.avi"]
    assert all(v["error"] is None and v["prediction"] for v in videos.values())
    assert any("2 flow fields, fewer than one temporal sample's 3" in n for n in videos["short.avi"]["notes"])
    assert videos["one_frame.avi"]["streams"] == ["spatial"]
    assert "predicted from the spatial stream alone" in " ".join(videos["one_frame.avi"]["notes"])


def test_a_damaged_file_gets_its_error_and_the_others_are_predicted(trained, tmp_path):
    good = _new_video(tmp_path / "good.avi")
    data = good.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])
    text = tmp_path / "text.avi"
    text.write_text("this is not a video\n")
    out = tmp_path / "p.json"
    result = _predict(cut, good, text, tmp_path / "absent.avi", "--runs", trained, "--json", out)
    assert result.exit_code == 1, result.output
    videos = json.loads(out.read_text())["videos"]
    assert [v["error"] is None for v in videos] == [False, True, False, False]
    assert videos[1]["prediction"] and videos[0]["prediction"] is None and videos[0]["top"] == []
    assert str(cut) in videos[0]["error"] and "truncated" in videos[0]["error"]
    assert str(text) in videos[2]["error"] and "absent.avi: no such file" in videos[3]["error"]
    assert f"{cut}: ERROR" in result.output and "Traceback" not in result.output
    assert "1 predicted, 3 failed" in result.output


def test_show_writes_a_picture_per_video(trained, tmp_path):
    import cv2

    video = _new_video(tmp_path / "clip.avi")
    result = _predict(video, "--runs", trained, "--show", tmp_path / "pics", "--views", "fast")
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(tmp_path / "pics" / "clip.png"))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 4 * 192


def _without_flow(src: Path, dst: Path, data: str | None = None) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=True)
    del state["flow"]
    if data is not None:
        state["config"]["data"] = data
    torch.save(state, dst)
    return dst


def test_a_checkpoint_without_flow_settings_uses_its_store_or_refuses_naming_the_fix(trained, synth_store,
                                                                                     tmp_path):
    video = _new_video(tmp_path / "clip.avi")
    temporal = trained / "temporal-split1" / "checkpoint_best.pt"
    assert torch.load(temporal, weights_only=True)["flow"]["algo"] == "farneback"  # recorded by trainer run
    old = _without_flow(temporal, tmp_path / "old.pt")  # its config still names the synthetic store
    result = _predict(video, "--runs", trained, "--temporal", old)
    assert result.exit_code == 0, result.output
    assert f"flow settings read from {synth_store} (named in its config)" in result.output
    gone = _without_flow(temporal, tmp_path / "gone.pt", data=str(tmp_path / "moved.h5"))
    refused = _predict(video, "--runs", trained, "--temporal", gone)
    assert refused.exit_code == 1
    assert (f"{gone} does not record the flow settings it was trained with" in refused.output
            and f"the store its config names, {tmp_path / 'moved.h5'}, is gone; pass --store PATH" in refused.output)
    given = _predict(video, "--runs", trained, "--temporal", gone, "--store", synth_store)
    assert given.exit_code == 0 and "(given with --store)" in given.output


def test_missing_models_and_bad_views_are_named(trained, tmp_path):
    video = _new_video(tmp_path / "clip.avi")
    result = _predict(video, "--runs", tmp_path / "nothing")
    assert result.exit_code == 1
    expected = tmp_path / "nothing" / "spatial-split1" / "checkpoint_best.pt"
    assert f"no such checkpoint: {expected} (spatial)" in result.output
    bad = _predict(video, "--runs", trained, "--views", "3x4")
    assert bad.exit_code == 1 and "crops 1, 5 or 10" in bad.output
    empty = _predict(tmp_path / "nothing_here", "--runs", trained)
    assert empty.exit_code == 1
    (tmp_path / "empty").mkdir()
    none = _predict(tmp_path / "empty", "--runs", trained)
    assert none.exit_code == 1 and f"no video files in {tmp_path / 'empty'}" in none.output
    unwritable = _predict(video, "--runs", trained, "--json", tmp_path / "no" / "such" / "p.json")
    assert unwritable.exit_code == 1 and "--json" in unwritable.output and "cannot write there" in unwritable.output
    assert "Traceback" not in unwritable.output + none.output + bad.output


def test_recorded_settings_round_trip_and_what_cannot_be_reproduced():
    from flowprep import FlowprepError
    from flowprep.flow.params import resolve_params
    from flowprep.settings import RunSettings, settings_from_recorded
    from flowprep.video.decode import Resize

    for algo, backend, resize, codec in (("tvl1", "opencv", Resize(340, 256), "jpeg"),
                                         ("dis", "opencv", Resize(None, None, 128), "jpeg-xy"),
                                         ("farneback", "torch", Resize(170, 128), "raw")):
        s = RunSettings(algo, resolve_params(algo, {}, backend), backend, "cpu", 15.0, codec, 90, resize)
        recorded = json.loads(json.dumps(s.recorded(), default=str))
        back = settings_from_recorded(recorded)
        assert (back.algo, back.params, back.backend, back.bound, back.codec, back.resize) == (
            algo, s.params, backend, 15.0, codec, resize)
        assert back.jpeg_quality == (90 if codec != "raw" else 95)
    tvl1 = json.loads(json.dumps(RunSettings("tvl1", resolve_params("tvl1", {}, "opencv"), "opencv", "cpu").recorded()))
    for change, text in (({"algo": "imported", "imported": {"tool": "mmaction2"}}, "imported from mmaction2's files"),
                         ({"interpolation": "INTER_AREA"}, "interpolation 'INTER_AREA', here 'INTER_LINEAR'"),
                         ({"params": {"tau": -1}}, "tau=-1"), ({"size": "big"}, "frame size 'big'")):
        with pytest.raises(FlowprepError, match=text.replace("(", r"\(").replace(")", r"\)")):
            settings_from_recorded({**tvl1, **change})
    missing = dict(tvl1)
    del missing["size"]
    with pytest.raises(FlowprepError, match="lack size"):
        settings_from_recorded(missing)


def test_raft_flow_needs_the_same_weights(tmp_path):
    from flowprep import FlowprepError
    from flowprep.settings import settings_from_recorded

    base = json.loads(json.dumps(_tvl1_recorded()))
    weights = tmp_path / "raft.pth"
    raft = {**base, "algo": "raft", "implementation": "torchvision-raft_large-0123456789abcdef-cuda",
            "params": {"model": "large", "iterations": 12, "weights": str(weights)},
            "raft_weights": {"file": "/elsewhere/raft.pth", "sha256": "0123456789abcdef"}}
    with pytest.raises(FlowprepError, match="made by RAFT with weights of SHA-256 0123456789abcdef: RAFT weights "
                                            "file .* does not exist"):
        settings_from_recorded(raft)
    weights.write_bytes(b"other weights")
    with pytest.raises(FlowprepError, match="but the weights found here have"):
        settings_from_recorded(raft)


def _tvl1_recorded() -> dict:
    from flowprep.flow.params import resolve_params
    from flowprep.settings import RunSettings

    return RunSettings("tvl1", resolve_params("tvl1", {}, "opencv"), "opencv", "cpu").recorded()


def test_a_resumed_run_on_a_store_of_other_flow_settings_is_refused(trained, tmp_path):
    from data_manifest import make_synthetic
    from flowprep.pipeline import ExtractConfig, extract
    from flowprep.video.decode import parse_size

    videos = make_synthetic(tmp_path / "synth", classes=4, videos_per_class=6, frames=12, size=(80, 60))
    other = extract(ExtractConfig(videos=videos, out=tmp_path / "dis.h5", algo="dis", jobs=1,
                                  resize=parse_size("64x48"), progress=False)).store
    args = ["run", "temporal", "--data", str(other), "--out", str(trained), "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(trainer_main, args)
    assert result.exit_code == 1
    assert "this run was trained on flow made otherwise than" in result.output and "algo: 'farneback'" in result.output


def test_a_store_made_with_the_torch_backend_gets_torch_flow(trained, tmp_path):
    """The batched torch path that CUDA takes, run on the CPU: a checkpoint whose store was extracted with
    --backend torch gets its flow from torchflow (quantised as a tensor), which here agrees with OpenCV."""
    video = _new_video(tmp_path / "clip.avi")
    state = torch.load(trained / "temporal-split1" / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    state["flow"]["implementation"] = "flowprep-torch-farneback-cpu"
    torch.save(state, tmp_path / "torch.pt")
    out_cv, out_torch = tmp_path / "cv.json", tmp_path / "torch.json"
    opencv = _predict(video, "--runs", trained, "--device", "cpu", "--json", out_cv, "--views", "fast")
    torched = _predict(video, "--runs", trained, "--device", "cpu", "--json", out_torch, "--views", "fast",
                       "--temporal", tmp_path / "torch.pt")
    assert opencv.exit_code == 0 and torched.exit_code == 0, opencv.output + torched.output
    assert "flow: farneback (torch on cpu; recorded)" in torched.output
    a, b = _scores(json.loads(out_cv.read_text()))[0], _scores(json.loads(out_torch.read_text()))[0]
    assert max(abs(a[c] - b[c]) for c in a) < 1e-3


@pytest.mark.gpu
def test_cuda_flow_goes_through_the_batched_torch_backend(trained, tmp_path):
    video = _new_video(tmp_path / "clip.avi")
    out_cpu, out_gpu = tmp_path / "cpu.json", tmp_path / "gpu.json"
    cpu = _predict(video, "--runs", trained, "--device", "cpu", "--json", out_cpu)
    gpu = _predict(video, "--runs", trained, "--device", "cuda", "--json", out_gpu)
    assert cpu.exit_code == 0 and gpu.exit_code == 0, cpu.output + gpu.output
    assert "flow: farneback (torch on cuda; recorded: opencv)" in gpu.output
    a, b = _scores(json.loads(out_cpu.read_text()))[0], _scores(json.loads(out_gpu.read_text()))[0]
    assert max(abs(a[c] - b[c]) for c in a) < 0.25  # flow on another device and bf16 models: close, not equal
