"""The PyTorch flow backend (flowprep.flow.torchflow) against OpenCV and against known motion.

Frames are small synthetic scenes (textured, sharp edges, noise, optionally JPEG-compressed) moved by a
known sub-pixel shift and rotation, so that the whole file runs in well under a minute on 2 CPU cores.
Parity thresholds sit slightly below what was measured (bit-identical results on an AVX2/FMA x86 CPU with
opencv-contrib-python 4.14); the bit-exactness checks themselves run only where that holds.
"""
from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from flowprep import quantize
from flowprep.flow import torchflow
from flowprep.flow.compute import OpenCVFlow
from flowprep.flow.torchflow import ops, parity

cv2 = pytest.importorskip("cv2")

TVL1 = dict(torchflow.TVL1_PARAMS)
FARNEBACK = dict(torchflow.FARNEBACK_PARAMS)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# OpenCV's float kernels use FMA on AVX2 machines, and our emulation follows that; elsewhere results
# agree to float rounding only, so bit-exactness is asserted only on such CPUs.
EXACT_PLATFORM = (platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= _cpu_flags()
                  and cv2.__version__.startswith("4.") and int(cv2.__version__.split(".")[1]) >= 11)
exact_only = pytest.mark.skipif(not EXACT_PLATFORM, reason="bit-exactness needs an AVX2/FMA x86 CPU "
                                "and OpenCV >= 4.11")


def cv2_tvl1(prev: np.ndarray, nxt: np.ndarray, **over) -> np.ndarray:
    return OpenCVFlow("tvl1", **dict(TVL1, **over))(prev, nxt)


def cv2_farneback(prev: np.ndarray, nxt: np.ndarray, **over) -> np.ndarray:
    return OpenCVFlow("farneback", **dict(FARNEBACK, **over))(prev, nxt)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small frames gain nothing from intra-op threads, and on a busy 2-core machine the OpenMP hand-off
    makes them several times slower; restore the setting afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes():
    """Three 72x96 pairs: plain, JPEG-compressed, and a larger motion; with their true flows."""
    return [parity.synthetic_pair(72, 96, seed=1, shift=(1.3, -0.7), angle_deg=1.0),
            parity.synthetic_pair(72, 96, seed=2, shift=(-0.6, 1.1), angle_deg=-1.5, jpeg_quality=80),
            parity.synthetic_pair(72, 96, seed=3, shift=(3.4, 2.2), angle_deg=0.5)]


@pytest.fixture(scope="module")
def tvl1_runs(scenes):
    """torch TV-L1 of the three scenes in one batch, and OpenCV's of each."""
    prev = np.stack([s[0] for s in scenes])
    nxt = np.stack([s[1] for s in scenes])
    ours = torchflow.tvl1(prev, nxt).numpy()
    theirs = np.stack([cv2_tvl1(s[0], s[1]) for s in scenes])
    return ours, theirs


# --- primitives ------------------------------------------------------------------------------------------

def test_ops_match_opencv_bit_for_bit_or_nearly():
    rng = np.random.default_rng(0)
    img = (rng.random((48, 64)) * 255).astype(np.float32)
    t = torch.from_numpy(img)[None]
    exact = EXACT_PLATFORM
    tol = 0.0 if exact else 1e-3

    def check(ours, ref):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=tol)

    check(ops.resize_linear(t, ops.resize_size(48, 64, 0.8), (0.8, 0.8))[0].numpy(),
          cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR))
    check(ops.resize_linear(t, (60, 80))[0].numpy(), cv2.resize(img, (80, 60)))
    u = (rng.random((48, 64)) * 8 - 4).astype(np.float32)
    v = (rng.random((48, 64)) * 8 - 4).astype(np.float32)
    mx = (np.arange(64)[None] + u).astype(np.float32)
    my = (np.arange(48)[:, None] + v).astype(np.float32)
    check(ops.remap_cubic(t[:, None], torch.from_numpy(mx)[None], torch.from_numpy(my)[None])[0, 0].numpy(),
          cv2.remap(img, mx, my, cv2.INTER_CUBIC))
    np.testing.assert_array_equal(ops.median_blur5(t)[0].numpy(), cv2.medianBlur(img, 5))
    for k, s in [(3, 0.0), (3, 0.5), (9, 1.5)]:
        check(ops.gaussian_blur(t, k, s)[0].numpy(), cv2.GaussianBlur(img, (k, k), s, s))
    flow2 = (rng.random((24, 32, 2)) * 4 - 2).astype(np.float32)
    ours = ops.resize_linear_native(torch.from_numpy(flow2).permute(2, 0, 1).contiguous(), (60, 80))
    check(ours.permute(1, 2, 0).numpy(), cv2.resize(flow2, (80, 60)))


def test_compare_flows_by_hand():
    a = np.zeros((1, 2, 2, 2), np.float32)
    b = a.copy()
    b[0, 0, 0] = [0.0, 0.5]  # end-point error 0.5
    b[0, 0, 1] = [0.2, 0.0]  # 0.2
    b[0, 1, 0] = [25.0, -25.0]  # clipped at the bound on both sides
    got = parity.compare_flows(b, a)
    assert got["within_0.1"] == pytest.approx(1 / 4)  # only the untouched pixel
    assert got["within_0.5"] == pytest.approx(3 / 4)  # 0.5 counts, the clipped pixel does not
    # quantised: 0 -> 128, 0.5 -> floor(130.6875 + 0.5) = 131, 0.2 -> floor(128.775 + 0.5) = 129,
    # 25 -> 255, -25 -> 0: 4 of 8 values are identical, 5 of 8 within one level
    assert quantize(np.float32([0.0, 0.5, 0.2, 25.0, -25.0])).tolist() == [128, 131, 129, 255, 0]
    assert got["u8_equal"] == pytest.approx(4 / 8)
    assert got["u8_within1"] == pytest.approx(5 / 8)


def test_synthetic_pair_truth_is_what_the_frames_show():
    prev, nxt, flow = parity.synthetic_pair(48, 64, seed=5, shift=(2.0, 0.0), angle_deg=0.0, noise=0.0)
    assert prev.dtype == np.uint8 and prev.shape == (48, 64) and flow.shape == (48, 64, 2)
    np.testing.assert_allclose(flow[..., 0], 2.0, atol=1e-6)
    np.testing.assert_allclose(flow[..., 1], 0.0, atol=1e-6)
    # an integer shift is a pure translation of the rendered scene (rounding to uint8 aside)
    assert np.abs(nxt[:, 2:].astype(int) - prev[:, :-2].astype(int)).max() <= 1


# --- TV-L1 ---------------------------------------------------------------------------------------------------

def test_tvl1_parity_with_opencv(tvl1_runs):
    ours, theirs = tvl1_runs
    for i in range(len(ours)):
        fig = parity.compare_flows(ours[i], theirs[i])
        # measured: EPE 0, 100% within 0.1 px, 100% of uint8 values identical (bit-identical)
        assert fig["within_0.1"] >= 0.98, fig
        assert fig["within_0.5"] >= 0.999, fig
        assert fig["epe"] <= 0.02, fig
        assert fig["u8_within1"] >= 0.995, fig
        assert fig["u8_equal"] >= 0.9, fig


@exact_only
def test_tvl1_is_bit_identical_to_opencv(tvl1_runs):
    ours, theirs = tvl1_runs
    np.testing.assert_array_equal(ours, theirs)


def test_tvl1_recovers_the_known_motion(scenes, tvl1_runs):
    ours, theirs = tvl1_runs
    for i, (_, _, truth) in enumerate(scenes):
        ours_epe = parity.compare_flows(ours[i], truth, margin=4)["epe"]
        cv_epe = parity.compare_flows(theirs[i], truth, margin=4)["epe"]
        # measured about 0.06-0.13 px for both
        assert ours_epe <= 0.2
        assert ours_epe <= cv_epe + 0.01


def test_tvl1_pairs_converge_independently_in_a_batch(scenes):
    """A batch gives each pair exactly what it gets alone, though pairs stop iterating at different times."""
    prev, nxt, _ = scenes[0]
    still = scenes[1][0]  # identical frames converge at once, the others keep iterating
    p = np.stack([prev, still, scenes[2][0]])
    n = np.stack([nxt, still, scenes[2][1]])
    params = dict(nscales=2, warps=2)
    batch = torchflow.tvl1(p, n, **params)
    # the CUDA scheme (mask every iteration, ask the host every few), run here on CPU
    lazy = torchflow.tvl1(p, n, **params, lazy_sync=True, sync_every=7)
    for i in range(3):
        alone = torchflow.tvl1(p[i], n[i], **params)
        assert torch.equal(batch[i], alone[0]), i
        assert torch.equal(lazy[i], alone[0]), i
    assert float(batch[1].abs().max()) == 0.0


def test_tvl1_other_parameters_match_opencv():
    prev, nxt, _ = parity.synthetic_pair(48, 64, seed=7, shift=(0.8, 0.4), angle_deg=2.0)
    for over in (dict(median_filtering=1, nscales=3, warps=3), dict(scale_step=0.5, epsilon=0.02, gamma=0.05)):
        ours = torchflow.tvl1(prev, nxt, **over)[0].numpy()
        fig = parity.compare_flows(ours, cv2_tvl1(prev, nxt, **over))
        assert fig["within_0.1"] >= 0.99 and fig["epe"] <= 0.01, (over, fig)


def test_tvl1_float_frames_are_read_as_0_to_1_like_opencv():
    prev, nxt, _ = parity.synthetic_pair(32, 40, seed=4)
    params = dict(nscales=2, warps=1, outer_iterations=2)
    as_u8 = torchflow.tvl1(prev, nxt, **params)
    as_float = torchflow.tvl1(torch.from_numpy(prev / np.float32(255)), torch.from_numpy(nxt / np.float32(255)),
                              **params)
    torch.testing.assert_close(as_float, as_u8, atol=1e-4, rtol=0)


# --- Farneback ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [0, 256])
def test_farneback_parity_with_opencv(scenes, flags):
    prev = np.stack([s[0] for s in scenes])
    nxt = np.stack([s[1] for s in scenes])
    ours = torchflow.farneback(prev, nxt, flags=flags).numpy()
    for i, (p, n, truth) in enumerate(scenes):
        theirs = cv2_farneback(p, n, flags=flags)
        fig = parity.compare_flows(ours[i], theirs)
        # measured: bit-identical at 96x72; elsewhere at most ~5e-6 px apart
        assert fig["epe"] <= 1e-4 and fig["within_0.1"] == 1.0 and fig["u8_equal"] >= 0.999, fig
        assert np.abs(ours[i] - theirs).max() <= 1e-3
        if EXACT_PLATFORM:
            np.testing.assert_array_equal(ours[i], theirs)
        assert parity.compare_flows(ours[i], truth, margin=4)["epe"] <= 0.3  # measured 0.06-0.2


def test_farneback_odd_parameters_match_opencv():
    prev, nxt, _ = parity.synthetic_pair(64, 85, seed=8)
    over = dict(pyr_scale=0.7, levels=4, winsize=10, iterations=2, poly_n=7, poly_sigma=1.5)
    ours = torchflow.farneback(prev, nxt, **over)[0].numpy()
    theirs = cv2_farneback(prev, nxt, **over)
    # 85 px wide: OpenCV's scalar tail columns of GaussianBlur round differently (see docs/torchflow.md)
    assert np.abs(ours - theirs).max() <= 1e-4


# --- API -------------------------------------------------------------------------------------------------

def test_api_shapes_devices_and_inputs():
    prev, nxt, _ = parity.synthetic_pair(24, 32, seed=9)
    out = torchflow.compute_flow_batch(prev[None], nxt[None], algo="farneback", device="cpu")
    assert out.shape == (1, 24, 32, 2) and out.dtype == torch.float32 and out.device.type == "cpu"
    from_torch = torchflow.farneback(torch.from_numpy(prev), torch.from_numpy(nxt))
    assert torch.equal(out, from_torch)
    assert torchflow.compute_flow_batch(prev, nxt, algo="tvl1", nscales=1, warps=1).shape == (1, 24, 32, 2)


@pytest.mark.parametrize("call, message", [
    (lambda p, n: torchflow.compute_flow_batch(p, n, algo="horn"), "unknown flow algorithm"),
    (lambda p, n: torchflow.compute_flow_batch(p, n, algo="dis"), "dis runs with --backend opencv"),
    (lambda p, n: torchflow.tvl1(p, n[:, :-1]), "differ in shape"),
    (lambda p, n: torchflow.tvl1(p, n, iterations=3), "unknown tvl1 parameter"),
    (lambda p, n: torchflow.tvl1(p, n, median_filtering=3), "median_filtering"),
    (lambda p, n: torchflow.farneback(p, n, flags=4), "flags"),
    (lambda p, n: torchflow.farneback(p[None, None], n[None, None]), "(B, H, W)"),
    (lambda p, n: torchflow.tvl1(p, n, device="tpu"), "device"),
])
def test_api_errors_name_the_problem(call, message):
    prev, nxt, _ = parity.synthetic_pair(16, 16, seed=0)
    with pytest.raises(torchflow.TorchFlowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(prev, nxt)


def test_flowprep_errors_family():
    from flowprep.errors import FlowprepError

    assert issubclass(torchflow.TorchFlowError, FlowprepError)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(scenes):
    prev = np.stack([s[0] for s in scenes])
    nxt = np.stack([s[1] for s in scenes])
    for algo in ("tvl1", "farneback"):
        gpu = torchflow.compute_flow_batch(prev, nxt, algo=algo, device="cuda").cpu().numpy()
        cpu = torchflow.compute_flow_batch(prev, nxt, algo=algo).numpy()
        for i in range(len(prev)):
            fig = parity.compare_flows(gpu[i], cpu[i])
            assert fig["within_0.1"] >= 0.98 and fig["epe"] <= 0.02, (algo, fig)
