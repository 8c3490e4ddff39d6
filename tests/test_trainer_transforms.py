"""Crop geometry, frame positions, channel layout and the flow-x inversion of mirrored views."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer import transforms as T


def test_paper_scales_on_340x256_and_on_small_frames():
    assert T.scale_sizes(256, [1.0, 0.875, 0.75, 0.65625]) == [256, 224, 192, 168]
    assert T.scale_sizes(48, [1.0, 0.875, 0.75, 0.65625]) == [48, 42, 36, 32]  # 31.5 rounds up
    assert T.crop_side(256, 0.875) == 224


def test_corner_offsets_of_the_paper_test_crop():
    # 224 x 224 on 340 x 256: 4 corners and the centre (rounded down)
    assert T.corner_offsets(256, 340, 224, 224) == [(0, 0), (0, 116), (32, 0), (32, 116), (16, 58)]
    with pytest.raises(ValueError, match="larger than the frame"):
        T.corner_offsets(48, 64, 50, 50)


def test_training_crops_come_from_the_scale_set_and_the_five_positions():
    rng = np.random.default_rng(0)
    sizes = set(T.scale_sizes(256, [1.0, 0.875, 0.75, 0.65625]))
    seen_aspect = False
    for _ in range(300):
        y, x, h, w = T.sample_crop_box(256, 340, [1.0, 0.875, 0.75, 0.65625], True, rng)
        assert h in sizes and w in sizes
        assert (y, x) in T.corner_offsets(256, 340, h, w)
        seen_aspect |= h != w
    assert seen_aspect  # width and height are drawn independently (aspect jitter)
    for _ in range(100):
        y, x, h, w = T.sample_crop_box(48, 64, [0.75], False, rng)
        assert 0 <= y <= 48 - h and 0 <= x <= 64 - w and h == w == 36


def test_uniform_positions():
    assert T.uniform_positions(100, 25).tolist() == [int((i + 0.5) * 4) for i in range(25)]
    assert T.uniform_positions(3, 5).tolist() == [0, 0, 1, 2, 2]
    assert T.uniform_positions(0, 2).tolist() == [0, 0]
    assert T.sample_indices(8, 3, 10).tolist() == [8, 9, 9]


def test_flow_fields_are_interleaved_x_then_y():
    frames = np.zeros((2, 3, 4, 2), np.uint8)
    frames[0, ..., 0], frames[0, ..., 1], frames[1, ..., 0], frames[1, ..., 1] = 10, 11, 20, 21
    out = T.crop_resize_planes(frames, (0, 0, 3, 3), 3)
    assert out.shape == (4, 3, 3) and out[:, 0, 0].tolist() == [10, 11, 20, 21]
    clip = T.crop_resize_planes(frames, (0, 0, 3, 3), 3, clip=True)  # (c, T, S, S)
    assert clip.shape == (2, 2, 3, 3) and clip[:, :, 0, 0].tolist() == [[10, 20], [11, 21]]
    video = torch.from_numpy(frames)  # the same layout on the device for test videos
    stacks = T.assemble_video(video, torch.tensor([[0, 1], [1, 1]]), clip=False)
    assert stacks.shape == (2, 4, 3, 4) and stacks[:, :, 0, 0].tolist() == [[10, 11, 20, 21], [20, 21, 20, 21]]
    clips = T.assemble_video(video, torch.tensor([[0, 1]]), clip=True)
    assert clips.shape == (1, 2, 2, 3, 4) and clips[0, :, :, 0, 0].tolist() == [[10, 20], [11, 21]]


def test_the_same_crop_for_every_field_resized_and_mirrored():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 48, 64, 2), dtype=np.uint8)
    out = T.crop_resize_planes(frames, (4, 8, 32, 32), 32)  # crop at the input size: a plain crop
    for i in range(3):
        for k in range(2):
            assert np.array_equal(out[2 * i + k], frames[i, 4:36, 8:40, k])
    flipped = T.crop_resize_planes(frames, (4, 8, 32, 32), 32, flip=True)
    assert np.array_equal(flipped, out[:, :, ::-1])  # uint8 mirror; the x sign is flipped on the device
    small = T.crop_resize_planes(frames, (0, 0, 48, 40), 24)
    assert small.shape == (6, 24, 24)
    rgb = rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    assert np.array_equal(T.crop_resize_planes(rgb, (1, 2, 40, 40), 40), rgb[0, 1:41, 2:42].transpose(2, 0, 1))


def test_channels_first_fields_give_the_same_sample():
    """The training path reads flow as planes (FlowStore.read_flow_planes); the sample must be the one the
    interleaved layout gives, for every crop kind, resize, flip and the clip layout."""
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 48, 64, 2), dtype=np.uint8)
    planes = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    for box, size, flip, clip in [((4, 8, 32, 32), 32, False, False), ((0, 0, 48, 40), 24, True, False),
                                  ((6, 10, 42, 36), 28, True, True), ((0, 16, 48, 48), 48, False, True)]:
        a = T.crop_resize_planes(frames, box, size, flip, clip)
        b = T.crop_resize_planes(planes, box, size, flip, clip, channels_first=True)
        assert a.shape == b.shape and np.array_equal(a, b), (box, size, flip, clip)


def _position_coded_flow(h=12, w=16):
    """(1, 2, H, W) uint8 flow stack (L = 1): x = 100 + column, y = 100 + row."""
    x = np.broadcast_to(100 + np.arange(w), (h, w))
    y = np.broadcast_to(100 + np.arange(h)[:, None], (h, w))
    return torch.from_numpy(np.stack([x, y])[None].astype(np.uint8))


def test_ten_test_views_positions_and_flip_inversion():
    video = _position_coded_flow()
    views = T.make_test_views(video, "temporal", clip=False, side=8, size=8, n_crops=10)
    assert views.shape == (1, 10, 2, 8, 8)
    assert T.crop_names(10)[1] == "top_right" and T.crop_names(10)[6] == "top_right_flip"
    tr, tr_flip = views[0, 1], views[0, 6]
    # top-right crop starts at column 8, row 0: x = (100 + 8 - 128) / 128, y = (100 - 128) / 128
    assert tr[0, 0, 0].item() == pytest.approx(-20 / 128)
    assert tr[1, 0, 0].item() == pytest.approx(-28 / 128)
    # its mirror image: first column is column 15, and the x component changes sign; y does not
    assert tr_flip[0, 0, 0].item() == pytest.approx(+13 / 128)
    assert tr_flip[1, 0, 0].item() == pytest.approx(-28 / 128)
    assert torch.equal(tr_flip[0], -tr[0].flip(-1))
    assert torch.equal(tr_flip[1], tr[1].flip(-1))
    centre = views[0, 4]  # (12 - 8) // 2 = 2, (16 - 8) // 2 = 4
    assert centre[0, 0, 0].item() == pytest.approx((104 - 128) / 128)
    assert centre[1, 0, 0].item() == pytest.approx((102 - 128) / 128)


def test_rgb_flips_are_mirrors_only():
    video = torch.randint(0, 256, (2, 3, 12, 16), dtype=torch.uint8)
    views = T.make_test_views(video, "spatial", clip=False, side=8, size=8, n_crops=10)
    assert torch.allclose(views[:, 9], views[:, 4].flip(-1))


def test_training_flip_negates_only_flow_x_of_flipped_samples():
    x = torch.full((2, 4, 3, 3), 160, dtype=torch.uint8)  # 2 samples, L = 2: x0 y0 x1 y1
    out = T.normalize(x, "temporal", clip=False, flipped=torch.tensor([True, False]))
    assert out[0, :, 0, 0].tolist() == [-0.25, 0.25, -0.25, 0.25]
    assert out[1, :, 0, 0].tolist() == [0.25, 0.25, 0.25, 0.25]
    clip = torch.full((1, 2, 3, 2, 2), 96, dtype=torch.uint8)  # (B, c, T, H, W): only channel 0 is x
    out = T.normalize(clip, "temporal", clip=True, flipped=torch.tensor([True]))
    assert out[0, 0].unique().tolist() == [0.25] and out[0, 1].unique().tolist() == [-0.25]
    assert T.normalize(torch.tensor([[[[128]]]], dtype=torch.uint8), "temporal", False,
                       torch.tensor([True])).item() == 0.0  # zero flow stays zero


def test_a_mirrored_drift_right_moves_left(synth_store):
    """On real (synthetic) flow: the mirrored views of a rightward drift have negative mean x flow."""
    from flowprep import FlowStore

    from trainer.config import load_config
    from trainer.data import VideoFrames

    store = FlowStore(synth_store)
    vid = next(v for v in store.video_ids if "DriftRight" in v)
    cfg = load_config("temporal", overrides={"flow_length": 3})
    item = VideoFrames(store, [vid], {vid: 2}, cfg, frames=2)[0]
    video = T.assemble_video(item.fields, item.layout, clip=False)
    assert video.shape[:2] == (2, 6)
    views = T.make_test_views(video, "temporal", False, side=40, size=40, n_crops=10)
    x_plain = views[:, :5, 0::2].mean().item()
    x_flip = views[:, 5:, 0::2].mean().item()
    assert x_plain > 0.02 and x_flip == pytest.approx(-x_plain, rel=0.2)


def test_test_stacks_sit_at_uniform_positions(synth_store):
    from flowprep import FlowStore

    from trainer.config import load_config
    from trainer.data import VideoFrames

    store = FlowStore(synth_store)
    vid = store.video_ids[0]
    n = store.num_flows(vid)
    cfg = load_config("temporal", overrides={"flow_length": 3})
    item = VideoFrames(store, [vid], {vid: 5}, cfg, frames=4)[0]
    assert (item.label, item.position, item.error) == (5, 0, None)
    assert item.layout.shape == (4, 3)
    assert len(item.fields) == len(np.unique(item.layout.numpy()))  # overlapping stacks: each field decoded once
    video = T.assemble_video(item.fields, item.layout, clip=False)
    starts = T.uniform_positions(n - 2, 4)
    for f, s in enumerate(starts):
        fields = store.read_flow(vid, [s, s + 1, s + 2])  # (3, H, W, 2)
        expect = fields.transpose(0, 3, 1, 2).reshape(6, *fields.shape[1:3])  # x0 y0 x1 y1 x2 y2
        assert np.array_equal(video[f].numpy(), expect)
