"""RAFT through torchvision (flowprep.flow.torchflow.raft): shapes, batching, padding, determinism, weights.

Pretrained weights are never available here (nothing is downloaded), so every test uses a randomly
initialised model saved to a file with a fixed seed. Its flow is meaningless as motion, so accuracy is
not tested, only that the plumbing around the model is right: compared with torchvision's own transforms
and forward pass, with padding done by hand, with single pairs, and with itself. Frames are tiny (RAFT
pads them to its 128x128 minimum) and iterations are 2, so the file runs in well under a minute.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from flowprep.errors import FlowprepError
from flowprep.flow.torchflow import TorchFlowError, parity
from flowprep.flow.torchflow import raft

optical_flow = pytest.importorskip("torchvision.models.optical_flow")

ITER = 2


def _save_random(path, builder: str, seed: int = 0):
    torch.manual_seed(seed)
    torch.save(getattr(optical_flow, builder)(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    return _save_random(tmp_path_factory.mktemp("raft") / "raft_small_random.pth", "raft_small")


@pytest.fixture(scope="module")
def large_file(tmp_path_factory):
    return _save_random(tmp_path_factory.mktemp("raft") / "raft_large_random.pth", "raft_large")


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _pairs(n: int, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """n textured (n, H, W) uint8 pairs with different motions."""
    pairs = [parity.synthetic_pair(height, width, seed=s, shift=(1.0 + s, -0.5 * s)) for s in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.mark.parametrize("model", ["small", "large"])
def test_shape_dtype_finite(model, small_file, large_file):
    prev, nxt = _pairs(2)
    weights = str(small_file if model == "small" else large_file)
    flow = raft.raft_flow(prev, nxt, model=model, iterations=ITER, weights=weights)
    assert flow.shape == (2, 48, 64, 2) and flow.dtype == torch.float32 and flow.device.type == "cpu"
    assert torch.isfinite(flow).all()
    assert flow.abs().max() > 0  # a random net moves something; all-zero would mean the output was dropped
    single = raft.raft_flow(torch.from_numpy(prev[0]), torch.from_numpy(nxt[0]), model=model, iterations=ITER,
                            weights=weights)  # (H, W) torch frames: a batch of one
    assert single.shape == (1, 48, 64, 2)


def test_same_as_torchvision_forward(small_file):
    """At 128x128 (no padding) the flow is torchvision's: its weights' transforms on the gray frame
    replicated to RGB, then the model's last prediction, channel 0 = x."""
    prev, nxt = _pairs(2, 128, 128)
    net = optical_flow.raft_small(weights=None)
    net.load_state_dict(torch.load(small_file, weights_only=True))
    net.eval()
    rgb = [torch.from_numpy(f)[:, None].expand(-1, 3, -1, -1) for f in (prev, nxt)]  # (B, 3, H, W) uint8
    img1, img2 = optical_flow.Raft_Small_Weights.DEFAULT.transforms()(*rgb)
    with torch.no_grad():
        expected = net(img1, img2, num_flow_updates=ITER)[-1].permute(0, 2, 3, 1)
    got = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights=str(small_file))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("model", ["small", "large"])
def test_batch_equals_pairs_alone(model, small_file, large_file):
    """Three pairs in one forward pass give each pair's flow alone. Measured difference on x86 CPU:
    7.5e-6 px (small; convolutions pick other kernels for other batch sizes), 0 (large)."""
    prev, nxt = _pairs(3)
    weights = str(small_file if model == "small" else large_file)
    batch = raft.raft_flow(prev, nxt, model=model, iterations=ITER, weights=weights)
    alone = torch.cat([raft.raft_flow(prev[i:i + 1], nxt[i:i + 1], model=model, iterations=ITER,
                                      weights=weights) for i in range(3)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-4)
    assert not torch.equal(batch[0], batch[1])  # the pairs differ, so the comparison means something


def test_pad_amounts():
    # centred, the odd pixel at the right / bottom; sides a multiple of 8 and at least 128
    assert raft.pad_amounts(256, 340) == (2, 2, 0, 0)
    assert raft.pad_amounts(130, 133) == (1, 2, 3, 3)
    assert raft.pad_amounts(45, 61) == (33, 34, 41, 42)
    assert raft.pad_amounts(128, 128) == (0, 0, 0, 0)


@pytest.mark.parametrize("height, width", [(45, 61), (130, 133)])
def test_padding_crops_back(height, width, small_file):
    """Odd sizes come back at the input size, and equal the flow of frames padded beforehand by edge
    replication (numpy's 'edge' mode) to a size RAFT takes as it is, cropped to the original frame."""
    prev, nxt = _pairs(1, height, width)
    left, right, top, bottom = raft.pad_amounts(height, width)
    flow = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights=str(small_file))
    assert flow.shape == (1, height, width, 2)
    pad = ((0, 0), (top, bottom), (left, right))
    big = raft.raft_flow(np.pad(prev, pad, mode="edge"), np.pad(nxt, pad, mode="edge"), model="small",
                         iterations=ITER, weights=str(small_file))
    assert big.shape[1] % 8 == 0 and big.shape[2] % 8 == 0 and min(big.shape[1:3]) >= raft.MIN_SIZE
    assert torch.equal(flow, big[:, top:top + height, left:left + width])


def test_deterministic(small_file):
    prev, nxt = _pairs(2)
    first = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights=str(small_file))
    raft._MODELS_BUILT.clear()  # a freshly loaded model too
    second = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights=str(small_file))
    assert torch.equal(first, second)


def test_model_cached_per_file(small_file, tmp_path, monkeypatch):
    calls = []
    load = raft._load_model
    monkeypatch.setattr(raft, "_load_model", lambda *a: calls.append(a) or load(*a))
    prev, nxt = _pairs(1)
    other = tmp_path / "copy.pth"
    other.write_bytes(small_file.read_bytes())
    for _ in range(3):
        raft.raft_flow(prev, nxt, model="small", iterations=1, weights=str(other))
    assert len(calls) == 1
    _save_random(other, "raft_small", seed=1)  # rewritten: the new weights are used
    os.utime(other, ns=(1, 1))  # a different mtime even on coarse-timestamp file systems
    raft.raft_flow(prev, nxt, model="small", iterations=1, weights=str(other))
    assert len(calls) == 2


def test_checkpoint_dict(small_file, tmp_path):
    """A checkpoint dict {"model": state_dict, ...} (torchvision's reference scripts) loads the same."""
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"model": torch.load(small_file, weights_only=True), "epoch": 3}, ckpt)
    prev, nxt = _pairs(1)
    a = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights=str(small_file))
    b = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights=str(ckpt))
    assert torch.equal(a, b)


def test_torch_cache(small_file, tmp_path, monkeypatch):
    """weights="" reads the file torchvision downloads Raft_Small_Weights.DEFAULT to, under TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = os.path.basename(optical_flow.Raft_Small_Weights.DEFAULT.url)
    cached = tmp_path / "hub" / "checkpoints" / name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(small_file.read_bytes())
    assert raft.cache_file("small") == cached
    prev, nxt = _pairs(1)
    a = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights="")
    b = raft.raft_flow(prev, nxt, model="small", iterations=ITER, weights=str(small_file))
    assert torch.equal(a, b)
    assert raft.weights_identity("small", "")["file"] == str(cached.resolve())


@pytest.mark.parametrize("model, builder, enum", [("large", "raft_large", "Raft_Large_Weights"),
                                                  ("small", "raft_small", "Raft_Small_Weights")])
def test_missing_cache_names_file_and_command(model, builder, enum, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / os.path.basename(getattr(optical_flow, enum).DEFAULT.url)
    prev, nxt = _pairs(1)
    with pytest.raises(raft.RaftWeightsError) as err:
        raft.raft_flow(prev, nxt, model=model, iterations=1)
    text = str(err.value)
    assert str(expected) in text
    assert (f'python -c "from torchvision.models.optical_flow import {builder}, {enum}; '
            f'{builder}(weights={enum}.DEFAULT)"') in text
    assert "--param weights=FILE" in text
    assert isinstance(err.value, FlowprepError)
    assert not expected.exists()  # nothing was fetched


@pytest.mark.parametrize("given", ["missing.pth", "."])
def test_missing_or_directory_file(given, tmp_path):
    path = tmp_path / given
    with pytest.raises(raft.RaftWeightsError, match="does not exist|is a directory") as err:
        raft.raft_flow(*_pairs(1), model="small", iterations=1, weights=str(path))
    assert str(path.resolve()) in str(err.value) or str(path) in str(err.value)


def _truncated(small_file):
    data = small_file.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind", ["random", "empty", "text", "truncated", "tensor", "not_tensors"])
def test_garbage_file(kind, small_file, tmp_path):
    bad = tmp_path / f"{kind}.pth"
    if kind == "tensor":
        torch.save(torch.zeros(3), bad)
    elif kind == "not_tensors":
        torch.save({"epoch": 3, "lr": 0.1}, bad)
    else:
        bad.write_bytes({"random": np.random.default_rng(0).bytes(4096), "empty": b"", "text": b"weights\n",
                         "truncated": _truncated(small_file)}[kind])
    with pytest.raises(raft.RaftWeightsError, match="is not a RAFT weights file") as err:
        raft.raft_flow(*_pairs(1), model="small", iterations=1, weights=str(bad))
    assert str(bad) in str(err.value) and "--param weights=FILE" in str(err.value)


def test_small_weights_for_large_model(small_file):
    with pytest.raises(raft.RaftWeightsError) as err:
        raft.raft_flow(*_pairs(1), model="large", iterations=1, weights=str(small_file))
    text = str(err.value)
    assert str(small_file) in text and "not a raft_large state dict" in text
    assert "missing" in text and "--param model=small" in text


def test_weights_identity(small_file, tmp_path):
    ident = raft.weights_identity("small", str(small_file))
    assert ident == {"file": str(small_file.resolve()),
                     "sha256": hashlib.sha256(small_file.read_bytes()).hexdigest()[:16]}
    other = _save_random(tmp_path / "other.pth", "raft_small", seed=1)
    assert raft.weights_identity("small", str(other))["sha256"] != ident["sha256"]


def test_bad_frames(small_file):
    prev, nxt = _pairs(1)
    with pytest.raises(TorchFlowError, match="differ in shape"):
        raft.raft_flow(prev, nxt[:, :40], model="small", iterations=1, weights=str(small_file))


def test_extract_with_raft_records_the_weights_and_refuses_others(small_file, tmp_path):
    """`flowprep extract --algo raft` through the table and the batched device path: the weights' SHA-256
    is recorded, a resume with other weights is refused, absent weights are named before any file."""
    from click.testing import CliRunner

    from flowprep import FlowStore
    from flowprep.cli import main as cli
    from tests.test_extract import make_dataset

    videos = make_dataset(tmp_path / "v", bad=False, classes=1, per_class=2, frames=3)
    out = tmp_path / "f.h5"
    args = ["extract", "--videos", str(videos), "--out", str(out), "--size", "48x36", "--algo", "raft",
            "--param", "model=small", "--param", f"iterations={ITER}", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "--param", f"weights={small_file}"])
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(small_file.read_bytes()).hexdigest()[:16]
    with FlowStore(out) as store:
        assert store.attrs["implementation"] == f"torchvision-raft_small-{sha}-cpu"
        assert store.attrs["raft_weights"]["sha256"] == sha and store.attrs["params"]["iterations"] == ITER
        assert store.read_flow("v_0_0", [0, 1]).shape == (2, 36, 48, 2)
    other = _save_random(tmp_path / "other.pth", "raft_small", seed=1)
    refused = CliRunner().invoke(cli, [*args, "--param", f"weights={other}"])
    assert refused.exit_code == 1 and "other settings" in refused.output and "implementation" in refused.output
    missing = CliRunner().invoke(cli, [*args[:4], str(tmp_path / "g.h5"), *args[5:],
                                       "--param", f"weights={tmp_path / 'none.pth'}"])
    assert missing.exit_code == 1 and "none.pth does not exist" in missing.output
    assert not (tmp_path / "g.h5.parts").exists() and not (tmp_path / "g.h5.lock").exists()
