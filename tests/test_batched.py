"""The batched torch-backend extraction path, run on CPU: same store format, same results as OpenCV."""
import numpy as np
import pytest
from click.testing import CliRunner

from flowprep import FlowStore
from flowprep.cli import main as cli
from tests.test_extract import make_dataset


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batched")
    videos = make_dataset(tmp / "videos", bad=True, classes=2, per_class=2, frames=5)
    outs = {}
    for backend in ("opencv", "torch"):
        out = tmp / f"{backend}.h5"
        result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(out), "--size", "48x36",
                                          "--algo", "farneback", "--codec", "raw", "--backend", backend,
                                          "--batch-size", "3", "--jobs", "2", "--no-progress"])
        assert result.exit_code == 1, result.output  # the five bad files fail on both paths
        assert "done 4" in result.output and "failed 5" in result.output
        outs[backend] = out
    return outs


def test_torch_backend_writes_the_same_store(two_stores):
    with FlowStore(two_stores["opencv"]) as a, FlowStore(two_stores["torch"]) as b:
        assert a.video_ids == b.video_ids
        assert b.attrs["implementation"] == "flowprep-torch-farneback-cpu"
        assert {f["video_id"] for f in a.failures} == {f["video_id"] for f in b.failures}
        diffs = []
        for vid in a.video_ids:
            n = a.num_flows(vid)
            assert b.num_flows(vid) == n and b.num_frames(vid) == a.num_frames(vid)
            assert np.array_equal(a.read_rgb(vid, range(n + 1)), b.read_rgb(vid, range(n + 1)))
            diffs.append(np.abs(a.read_flow(vid, range(n)).astype(int) - b.read_flow(vid, range(n))).ravel())
            assert b.record(vid)["clipped_fraction"] == pytest.approx(a.record(vid)["clipped_fraction"], abs=1e-3)
        d = np.concatenate(diffs)
        # torch Farneback follows OpenCV's arithmetic; after quantisation nearly every value is identical
        assert (d == 0).mean() >= 0.99 and (d <= 1).mean() >= 0.999


def test_a_torch_backend_store_records_the_torch_and_triton_versions(two_stores):
    """The versions of the code that computed the flow: torch and Triton for the torch backend (the Dask
    check compares them), neither for OpenCV; the rest as every store records them (settings.tool_versions)."""
    from importlib.metadata import version

    import cv2

    with FlowStore(two_stores["opencv"]) as a, FlowStore(two_stores["torch"]) as b:
        va, vb = a.attrs["versions"], b.attrs["versions"]
    assert vb["torch"] == version("torch") and "triton" in vb
    assert "torch" not in va and "triton" not in va
    assert va["opencv"] == vb["opencv"] == cv2.__version__
    assert set(va) == {"flowprep", "opencv", "numpy", "h5py", "python"}


def test_resume_refuses_a_backend_switch(two_stores, tmp_path):
    videos = two_stores["opencv"].parent / "videos"
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(two_stores["torch"]),
                                      "--size", "48x36", "--algo", "farneback", "--codec", "raw", "--no-progress"])
    assert result.exit_code == 1 and "implementation" in result.output


def test_several_devices_split_the_work(tmp_path):
    """The one-process-per-device path, exercised with two CPU 'devices': every outcome comes back to the
    calling process, which alone writes."""
    from flowprep.video.decode import Resize
    from flowprep.executors.device import run_devices
    from flowprep.pipeline import ExtractConfig
    from flowprep.outcomes import EncodedVideo, VideoTask

    videos = make_dataset(tmp_path / "videos", bad=False, classes=2, per_class=2, frames=4)
    settings = ExtractConfig(videos=videos, out=tmp_path / "x.h5", algo="farneback", backend="torch",
                             resize=Resize(32, 24)).settings()
    tasks = [VideoTask(p.stem, str(p), p.relative_to(videos).as_posix(), p.parent.name, 0)
             for p in sorted(videos.rglob("*.avi"))]
    seen = []
    run_devices(tasks, settings, ["cpu", "cpu"], batch_size=2, decoders=1, on_outcome=seen.append)
    assert sorted(o.video_id for o in seen) == sorted(t.video_id for t in tasks)
    assert all(isinstance(o, EncodedVideo) and o.record["num_flows"] == 3 for o in seen)
    assert not list(tmp_path.glob("**/*.h5"))  # the device processes wrote nothing themselves


def test_device_quantisation_is_the_cpu_rule_exactly():
    import torch

    from flowprep import quantize

    k = np.arange(1, 256)
    edges = ((k - 0.5) * 40 / 255 - 20).astype(np.float32)  # the rounding boundaries for bound 20
    values = np.concatenate([np.nextafter(edges, np.float32(-1e9)), edges, np.nextafter(edges, np.float32(1e9)),
                             np.float32([0.0, -1e-45, np.nan, 25.0, -np.inf])])
    assert np.array_equal(quantize(torch.from_numpy(values), 20.0).numpy(), quantize(values, 20.0))


def test_torch_backend_jpeg_writer_keeps_every_field_in_order(two_stores, tmp_path):
    """The writer stage encodes fields on a thread pool while the next batch is computed: each video's
    fields must still be the raw store's fields, in order, through the same JPEG encoding."""
    import cv2

    from flowprep.store.codec import encode_jpeg

    videos = two_stores["torch"].parent / "videos"
    out = tmp_path / "jpeg.h5"
    result = CliRunner().invoke(cli, ["extract", "--videos", str(videos), "--out", str(out), "--size", "48x36",
                                      "--algo", "farneback", "--codec", "jpeg", "--backend", "torch",
                                      "--batch-size", "3", "--jobs", "2", "--no-progress"])
    assert result.exit_code == 1 and "done 4" in result.output, result.output
    with FlowStore(two_stores["torch"]) as raw, FlowStore(out) as jpg:
        assert jpg.video_ids == raw.video_ids
        for vid in raw.video_ids:
            n = raw.num_flows(vid)
            assert jpg.num_flows(vid) == n
            fields = raw.read_flow(vid, range(n))
            want = [cv2.imdecode(encode_jpeg("flow", f, 95), cv2.IMREAD_GRAYSCALE) for f in fields]
            got = jpg.read_flow(vid, range(n))
            for k in range(n):
                assert np.array_equal(got[k, :, :, 0], want[k][:, :48]), (vid, k)
                assert np.array_equal(got[k, :, :, 1], want[k][:, 48:]), (vid, k)


# -- NaN or infinite flow fails its video ----------------------------------------------------------------
def _in_process(tasks, settings, on_outcome):
    """An executor that runs the CPU path's per-video work here, so a monkeypatched flow reaches it."""
    from flowprep.work import extract_video

    for task in tasks:
        on_outcome(extract_video(task, settings))


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_nan_or_infinite_flow_fails_its_video_naming_the_field(tmp_path, monkeypatch, backend):
    """Quantising maps NaN to 128 (no motion) and inf to the bound: stored, they would be wrong data with
    exit 0. The one record path refuses them, on the CPU path and on the batched device path alike."""
    import flowprep.flow.compute as compute
    from flowprep.flow import torchflow
    from flowprep.pipeline import ExtractConfig, extract, local_executor
    from flowprep.video.decode import Resize

    calls = {"n": 0}
    if backend == "opencv":
        real = compute.OpenCVFlow.__call__

        def broken(self, prev, nxt):  # the second field of the first video is NaN
            flow = real(self, prev, nxt)
            calls["n"] += 1
            if calls["n"] == 2:
                flow[3, 4, 0] = np.nan
            return flow
        monkeypatch.setattr(compute.OpenCVFlow, "__call__", broken)
        bad_field = 1
    else:
        real = torchflow.compute_flow_batch

        def broken(prev, nxt, **kw):  # the first pair of the first batch is infinite
            flow = real(prev, nxt, **kw)
            calls["n"] += 1
            if calls["n"] == 1:
                flow[0, 2, 2, 1] = float("inf")
            return flow
        monkeypatch.setattr(torchflow, "compute_flow_batch", broken)
        bad_field = 0
    videos = make_dataset(tmp_path / "videos", bad=False, classes=1, per_class=3, frames=4)
    cfg = ExtractConfig(videos=videos, out=tmp_path / "f.h5", algo="farneback", backend=backend,
                        resize=Resize(32, 24), batch_size=2, jobs=1, progress=False)
    summary = extract(cfg, executor=_in_process if backend == "opencv" else local_executor(cfg))
    assert summary.done == 2 and len(summary.failed) == 1, summary
    reason = summary.failed[0]["reason"]
    assert f"flow field {bad_field} (frames {bad_field} to {bad_field + 1}) holds 1 NaN or infinite value" in reason
    with FlowStore(summary.store) as store:
        assert summary.failed[0]["video_id"] not in store.video_ids
        assert len(store.video_ids) == 2
