"""flowprep.flow.scenes: the true flow is what the rendered frames show.

Every scene of the benchmark's catalogue is checked two ways at 170x128: exactly, by evaluating the
continuous scene at p + flow(p) in the second frame, and on the uint8 frames, by warping the second frame
back with the true flow (bicubic), against a flow that is 1 px off. The occlusion masks are checked to
mark pixels the second frame does not show. Motions are hand-computed. The file runs in a few seconds.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flowprep.flow import scenes

cv2 = pytest.importorskip("cv2")

H, W = 128, 170


def _grid(height: int = H, width: int = W) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return xx, yy


def _warp_back(nxt: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """nxt sampled at p + flow(p) (bicubic): what the first frame should look like, (H, W) float32."""
    xx, yy = _grid(*nxt.shape)
    return cv2.remap(nxt.astype(np.float32), (xx + flow[..., 0]).astype(np.float32),
                     (yy + flow[..., 1]).astype(np.float32), cv2.INTER_CUBIC)


def _inner(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    out = mask.copy()
    out[:margin], out[-margin:], out[:, :margin], out[:, -margin:] = False, False, False, False
    return out


def test_motion_hand_computed():
    x, y = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    quarter = scenes.Motion(angle_deg=90.0, centre=(0.0, 0.0))
    np.testing.assert_allclose(np.stack(quarter.forward(x, y, H, W)), [[0.0, -2.0], [1.0, 0.0]], atol=1e-12)
    zoom = scenes.Motion(shift=(1.0, -1.0), zoom=2.0, centre=(10.0, 20.0))
    np.testing.assert_allclose(np.stack(zoom.forward(np.array([12.0]), np.array([20.0]), H, W)), [[15.0], [19.0]])
    centred = scenes.Motion(zoom=1.5)  # about the image centre ((W-1)/2, (H-1)/2), which stays put
    np.testing.assert_allclose(np.stack(centred.forward(np.array([84.5]), np.array([63.5]), H, W)), [[84.5], [63.5]])
    m = scenes.Motion(shift=(2.5, -1.5), angle_deg=3.0, zoom=1.02)
    xx, yy = _grid()
    np.testing.assert_allclose(np.stack(m.inverse(*m.forward(xx, yy, H, W), H, W)), np.stack([xx, yy]), atol=1e-9)


def test_translation_flow_is_the_shift():
    frames = scenes.render(scenes.SCENES["shift_13"], H, W)
    np.testing.assert_allclose(frames.flow[..., 0], 11.3, atol=1e-5)
    np.testing.assert_allclose(frames.flow[..., 1], -6.2, atol=1e-5)
    # what leaves the frame: the right 12 columns (x + 11.3 > W - 1) and the top 7 rows (y - 6.2 < 0)
    expected = np.zeros((H, W), dtype=bool)
    expected[:7] = True
    expected[:, W - 12:] = True
    np.testing.assert_array_equal(frames.outside, expected)
    np.testing.assert_array_equal(frames.valid, ~expected)


@pytest.mark.parametrize("name, shift, background", [("occlusion_slow", (-6.3, 3.8), (2.1, 0.4)),
                                                      ("occlusion_fast", (14.0, -5.0), None)])
def test_object_flow_is_its_motion(name, shift, background):
    """An object turns about its own centre, so the pixel there moves by the object's shift."""
    scene = scenes.SCENES[name]
    cx, cy = scene.objects[0].centre(H, W)
    frames = scenes.render(dataclasses.replace(
        scene, objects=(dataclasses.replace(scene.objects[0], outline=(round(cx) / (W - 1), round(cy) / (H - 1),
                                                                      *scene.objects[0].outline[2:])),)), H, W)
    np.testing.assert_allclose(frames.flow[int(round(cy)), int(round(cx))], shift, atol=1e-5)
    if background:
        np.testing.assert_allclose(frames.flow[2, W - 20], background, atol=1e-5)  # a background corner
    assert frames.occluded.any() and frames.boundary.any()


@pytest.mark.parametrize("name", list(scenes.SCENES))
def test_truth_matches_continuous_scene(name):
    """Exact: frame 2's continuous intensity at p + flow(p) is frame 1's at p, on every valid pixel
    (to the float32 rounding of the flow, ~1e-5 px)."""
    scene = scenes.SCENES[name]
    frames = scenes.render(scene, H, W)
    xx, yy = _grid()
    first = scene.intensity(0, xx, yy, H, W)
    second = scene.intensity(1, xx + frames.flow[..., 0], yy + frames.flow[..., 1], H, W)
    assert frames.valid.mean() > 0.75
    np.testing.assert_allclose(second[frames.valid], first[frames.valid], atol=1e-2)


@pytest.mark.parametrize("name", [n for n in scenes.SCENES if n != "texture_flat"])
def test_warping_second_frame_reproduces_first(name):
    """On the uint8 frames (noise off): the second frame warped back by the true flow matches the first
    within 1 grey level on average away from occlusions and borders (measured 0.3-0.7: rounding and
    bicubic interpolation), and a flow 1 px off does at least 3 times worse. (texture_flat is left out:
    too little texture for the 1-px-off flow to show.)"""
    frames = scenes.render(dataclasses.replace(scenes.SCENES[name], noise=0.0, jpeg_quality=None), H, W)
    keep = _inner(frames.valid)
    right = np.abs(_warp_back(frames.nxt, frames.flow) - frames.prev)[keep].mean()
    wrong = np.abs(_warp_back(frames.nxt, frames.flow + np.float32([1.0, 0.0])) - frames.prev)[keep].mean()
    assert right < 1.0
    assert wrong > 3 * right


@pytest.mark.parametrize("name", ["occlusion_slow", "occlusion_fast"])
def test_occluded_pixels_are_not_shown_in_second_frame(name):
    """Where the mask says occluded, the second frame shows the object instead: warping back fails there."""
    frames = scenes.render(dataclasses.replace(scenes.SCENES[name], noise=0.0), H, W)
    err = np.abs(_warp_back(frames.nxt, frames.flow) - frames.prev)
    occluded = _inner(frames.occluded & ~frames.outside)
    assert occluded.sum() > 50
    assert err[occluded].mean() > 5 * err[_inner(frames.valid)].mean()


def test_degradations_and_determinism():
    clean = scenes.render(dataclasses.replace(scenes.SCENES["noise_10"], noise=0.0), H, W)
    noisy = scenes.render(scenes.SCENES["noise_10"], H, W)
    assert 9.0 < np.std(noisy.prev.astype(float) - clean.prev) < 11.0
    again = scenes.render(scenes.SCENES["noise_10"], H, W)
    np.testing.assert_array_equal(noisy.prev, again.prev)
    np.testing.assert_array_equal(noisy.nxt, again.nxt)
    assert not np.array_equal(noisy.prev, noisy.nxt)
    jpeg = scenes.render(scenes.SCENES["jpeg_40"], H, W)
    low_noise = scenes.render(dataclasses.replace(scenes.SCENES["jpeg_40"], jpeg_quality=None), H, W)
    assert 0.5 < np.abs(jpeg.prev.astype(float) - low_noise.prev).mean() < 10
    np.testing.assert_array_equal(jpeg.flow, low_noise.flow)  # degradations never change the truth


def test_quick_scenes_exist_and_textures_differ():
    assert set(scenes.QUICK) <= set(scenes.SCENES)
    stds = {k: scenes.render(scenes.SCENES[f"texture_{k}"], H, W).prev.std() for k in ("smooth", "flat", "edges")}
    assert stds["flat"] < stds["smooth"] < stds["edges"]
    with pytest.raises(ValueError, match="unknown texture"):
        scenes.Texture("plaid").params(H, W)
