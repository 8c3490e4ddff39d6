"""How mmaction2 reads rawframes, re-implemented from its documented rules (RawframeDataset.load_annotations,
SampleFrames, RawFrameDecode) so that tests can read an export the way mmaction2 would, without mmaction2.

- An annotation line is split at white space: ``frame_dir total_frames label`` (one label); ``frame_dir`` is
  joined to ``data_prefix``.
- SampleFrames gives 0-based frame offsets in [0, total_frames) (out-of-bound ones wrap: ``mod total_frames``)
  and adds ``start_index`` (1 by default) to them.
- RawFrameDecode loads ``filename_tmpl.format(i)`` for RGB (default ``img_{:05}.jpg``, decoded as RGB) and
  ``filename_tmpl.format('x', i)`` and ``format('y', i)`` for Flow (``flow_{}_{:05d}.jpg`` in mmaction2's
  flow configs), each decoded as grayscale.
"""
from __future__ import annotations

import os.path as osp

import numpy as np

RGB_TMPL = "img_{:05}.jpg"
FLOW_TMPL = "flow_{}_{:05d}.jpg"


def load_annotations(ann_file: str, data_prefix: str) -> list[dict]:
    infos = []
    with open(ann_file, "r") as fin:
        for line in fin:
            parts = line.strip().split()
            label = [int(x) for x in parts[2:]]
            if len(label) != 1:
                raise ValueError(f"missing or multiple label in line: {line!r}")
            infos.append({"frame_dir": osp.join(data_prefix, parts[0]), "total_frames": int(parts[1]),
                          "label": label[0]})
    return infos


def sample_test_frames(total_frames: int, clip_len: int, num_clips: int, start_index: int = 1) -> np.ndarray:
    """SampleFrames in test mode (frame_interval 1, out_of_bound_opt 'loop'): (num_clips * clip_len,) indices."""
    if clip_len == 1:  # 2D recognizers: the middle of num_clips equal segments
        avg = total_frames / float(num_clips)
        offsets = (np.arange(num_clips) * avg + avg / 2.0).astype(np.int64)
    else:
        max_offset = max(total_frames - clip_len, 0)
        if num_clips > 1:
            offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1))).astype(np.int64)
        else:
            offsets = np.array([max_offset // 2])
    inds = offsets[:, None] + np.arange(clip_len)[None, :]
    return (np.mod(inds, total_frames) + start_index).reshape(-1)


def decode(info: dict, indices, modality: str, rgb_tmpl: str = RGB_TMPL, flow_tmpl: str = FLOW_TMPL) -> list:
    """RawFrameDecode: RGB frames (H, W, 3) RGB, or for Flow the images x, y, x, y, ... (H, W)."""
    import cv2

    imgs = []
    for i in indices:
        if modality == "RGB":
            img = cv2.imread(osp.join(info["frame_dir"], rgb_tmpl.format(int(i))), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(osp.join(info["frame_dir"], rgb_tmpl.format(int(i))))
            imgs.append(img[..., ::-1])
        else:
            for c in "xy":
                path = osp.join(info["frame_dir"], flow_tmpl.format(c, int(i)))
                img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise FileNotFoundError(path)
                imgs.append(img)
    return imgs
