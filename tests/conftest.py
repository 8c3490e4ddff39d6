"""Shared fixtures. GPU tests are skipped when torch sees no CUDA device."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    # the marker, not item.keywords: keywords also hold the names of the folders above a test (a checkout
    # in a folder named "gpu" would make every test a GPU test)
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory):
    """A finished flow store of a small synthetic motion dataset (4 classes x 6 videos x 12 frames, 64x48,
    Farneback flow, JPEG codec), built once per test session. Returns the store path."""
    from data_manifest import make_synthetic
    from flowprep.video.decode import parse_size
    from flowprep.pipeline import ExtractConfig, extract

    root = tmp_path_factory.mktemp("synth_store")
    videos = make_synthetic(root / "synth", classes=4, videos_per_class=6, frames=12, size=(80, 60))
    summary = extract(ExtractConfig(videos=videos, out=root / "flows.h5", algo="farneback", jobs=2,
                                    resize=parse_size("64x48"), progress=False))
    if not summary.ok:
        raise RuntimeError(f"synthetic store extraction failed: {summary.failed}")
    return summary.store
