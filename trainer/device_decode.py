"""The device half of the input pipeline (``decode = "device"``): JPEG decoding, crops and mirrors on the
training device.

The loader workers only read each sample's stored JPEG bytes and check their CRC-32 (data.TrainViews,
data.VideoFrames); a batch crosses to the main process as a few tensors (EncodedBatch), is decoded there in
one call, ``torchvision.io.decode_jpeg(list, device=...)`` (batched nvJPEG on CUDA, libjpeg-turbo on the
CPU, whose pixels equal OpenCV's), and cropped, resized and mirrored for the whole batch at once
(transforms.crop_resize_batch). The crop box and flip of a sample are drawn in the worker from the same
(seed, epoch, index) generator as with ``decode = "cpu"``, so both modes train on the same views; their
pixels differ only by OpenCV's fixed-point resize and its rounding to uint8 (at most 0.76 of a uint8 level on
CPU, tests/test_device_decode.py) and, on CUDA, by nvJPEG's IDCT.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from trainer import transforms as T
from trainer.errors import ConfigError, DataError

GEOMETRY = ("position", "y", "x", "h", "w", "height", "width")  # columns of EncodedBatch.geometry


class PixelBatch(NamedTuple):
    """A training batch as the workers hand it over with decode = cpu (a NamedTuple: the DataLoader pins
    its tensors)."""

    x: Any         # (B, C, [T,] S, S) uint8 crops
    flipped: Any   # (B,) bool: mirrored samples, whose flow x the device negates
    labels: Any    # (B,) int64
    release: Any   # batch_memory.Release: called once x is consumed, so that the worker may reuse its memory


class EncodedBatch(NamedTuple):
    """A training batch as the workers hand it over with decode = device (a NamedTuple: the DataLoader pins
    its tensors). Sample b's JPEGs are images [b * n, (b + 1) * n) with n = fields per sample x images per
    field (2 for flow with codec jpeg-xy: x, y; else 1), in field order."""

    data: Any      # (N,) uint8: every JPEG of the batch, back to back, checked against its CRC-32
    offsets: Any   # (images + 1,) int64 into data
    geometry: Any  # (B, 7) int64, columns GEOMETRY: video position in the dataset, crop box, frame size
    flipped: Any   # (B,) bool
    labels: Any    # (B,) int64
    release: Any   # batch_memory.Release: called once data is decoded


class EncodedFields(NamedTuple):
    """The stored JPEGs of a test video's fields (VideoItem.fields with decode = device), in field order."""

    data: Any      # (N,) uint8
    offsets: Any   # (images + 1,) int64
    height: int
    width: int


def resolve_decode(decode: str, cuda: bool, store) -> str:
    """"cpu" or "device" for a run (config key ``decode``): auto = device on CUDA, cpu otherwise (and for a
    store of codec raw, which holds pixels: nothing to decode). ConfigError for decode = device on one."""
    jpeg = store.codec.jpeg
    if decode == "auto":
        return "device" if cuda and jpeg else "cpu"
    if decode == "device" and not jpeg:
        raise ConfigError("decode = device decodes JPEGs, but this store has codec raw (pixels); "
                          "use --set decode=cpu (or auto)")
    return decode


def pack(pieces: list[np.ndarray], out_tensor) -> tuple[Any, Any, Any]:
    """JPEG byte strings -> (data (N,) uint8, offsets (n + 1,) int64, release); ``out_tensor(shape)`` makes
    the data tensor and its release (batch_memory.batch_tensor: shared memory in a DataLoader worker)."""
    import torch

    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    data, release = out_tensor((int(offsets[-1]),))
    if pieces:
        np.concatenate(pieces, out=data.numpy())
    return data, torch.from_numpy(offsets), release


def decode(data, offsets, kind: str, device, what) -> list:
    """Every JPEG of (data, offsets) decoded on ``device``: a list of (c, h, w) uint8 tensors (c = 3 for
    kind "rgb", 1 for flow). ``what(i)`` names the video of image i for the DataError raised when one does
    not decode (decoded again one by one to find it: a batch call does not say which)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.RGB if kind == "rgb" else ImageReadMode.GRAY
    bounds = offsets.tolist()
    images = [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if not images:
        return []
    try:
        return decode_jpeg(images, mode=mode, device=device)
    except RuntimeError:
        for i, image in enumerate(images):
            try:
                decode_jpeg(image, mode=mode)
            except RuntimeError as exc:
                raise DataError(f"{what(i)}: a stored JPEG that matches its checksum does not decode ({exc}); "
                                "run `flowprep verify` on the store: it names the command that repairs it") from None
        raise


def to_planes(images: list, kind: str, per_item: int, height: int, width: int, what):
    """Decoded images of n frames or fields -> (n, c, H, W) uint8 (flow: c = 2, x then y; RGB: c = 3).

    With codec jpeg a field is one (1, H, 2W) image, x | y side by side; with jpeg-xy two (1, H, W) images.
    DataError (named by ``what(i)``) when an image is not the size the store's record says."""
    import torch

    wide = kind == "flow" and per_item == 1
    want = (3 if kind == "rgb" else 1, height, 2 * width if wide else width)
    for i, img in enumerate(images):
        if tuple(img.shape) != want:
            raise DataError(f"{what(i)}: a stored image decodes to {tuple(img.shape)}, the record says {want}; "
                            "run `flowprep verify` on the store: it names the command that repairs it")
    x = torch.stack(images)  # (n * per_item, c, H, W') uint8
    if kind == "rgb":
        return x
    if wide:  # (n, 1, H, 2, W) -> (n, 2, H, W)
        return x.view(-1, height, 2, width).permute(0, 2, 1, 3)
    return x.view(-1, 2, height, width)


def network_input(batch, dataset, device):
    """A training batch from the loader -> (network input (B, C, [T,] S, S) float32 on ``device``, labels
    (B,) int64 there). ``dataset`` is the data.TrainViews that made it: decode = cpu batches are PixelBatch,
    normalised here; decode = device batches are EncodedBatch, decoded, cropped and normalised here. The
    batch's memory is released to its worker for reuse: its tensors must not be read afterwards."""
    import torch

    if not isinstance(batch, EncodedBatch):
        # a pinned copy (CUDA), or normalised into a new tensor here: either way x's memory is free after
        x = T.normalize(batch.x.to(device, non_blocking=True), dataset.stream, dataset.clip, batch.flipped,
                        dataset.flow_center)
        batch.release()
        return x, batch.labels.to(device, non_blocking=True)
    geometry = batch.geometry.numpy()
    per_sample = (len(batch.offsets) - 1) // max(len(geometry), 1)  # JPEGs per sample
    name = lambda b: f"video {dataset.ids[int(geometry[b, 0])]!r}"  # noqa: E731
    try:
        images = decode(batch.data, batch.offsets, dataset.kind, device, lambda i: name(i // per_sample))
    finally:  # the bytes are read (on CUDA from the pinned copy the DataLoader made of them)
        batch.release()
    out = None
    # one frame size per group (a store may hold videos of several sizes): decoded, cropped together
    sizes = sorted({(int(h), int(w)) for h, w in geometry[:, 5:7]})
    for height, width in sizes:
        rows = np.flatnonzero((geometry[:, 5] == height) & (geometry[:, 6] == width))
        group = [images[i] for b in rows for i in range(b * per_sample, (b + 1) * per_sample)]
        planes = to_planes(group, dataset.kind, dataset.per_item, height, width,
                           lambda i, rows=rows: name(rows[i // per_sample]))  # (b * n, c, H, W)
        x = sample_channels(planes.reshape(len(rows), -1, *planes.shape[1:]), dataset.clip)  # (b, C, H, W)
        x = T.crop_resize_batch(x, geometry[rows, 1:5], dataset.size, batch.flipped.numpy()[rows])
        if len(sizes) == 1:
            out = x
            break
        if out is None:
            out = x.new_empty((len(geometry), *x.shape[1:]))
        out[torch.from_numpy(rows).to(device)] = x
    if dataset.clip:  # (B, c*T, S, S) -> (B, c, T, S, S)
        out = out.reshape(out.shape[0], -1, dataset.length, *out.shape[-2:])
    x = T.normalize(out, dataset.stream, dataset.clip, batch.flipped, dataset.flow_center)
    return x, batch.labels.to(device, non_blocking=True)


def sample_channels(planes, clip: bool):
    """(B, n, c, H, W) decoded fields -> (B, C, H, W) in the network's channel order: 2D nets n*c channels,
    field-major (x0, y0, x1, y1, ...); clip nets c*n, component-major (c, T folded together)."""
    b, n, c, h, w = planes.shape
    if clip:
        planes = planes.transpose(1, 2)
    return planes.reshape(b, n * c, h, w)


def decoded_item(item, kind: str, per_item: int, device, name: str):
    """A data.VideoItem with its fields on ``device`` as (U, H, W, c) uint8 (what transforms.assemble_video
    takes): EncodedFields decoded there, decode = cpu fields moved; an item whose JPEG does not decode comes
    back with fields None and ``error`` set, like one whose bytes failed their checksum in the worker."""
    if item.fields is None:
        return item
    if not isinstance(item.fields, EncodedFields):
        return item._replace(fields=item.fields.to(device, non_blocking=True))
    enc = item.fields
    what = lambda i: f"video {name!r}"  # noqa: E731
    try:
        images = decode(enc.data, enc.offsets, kind, device, what)
        planes = to_planes(images, kind, per_item, enc.height, enc.width, what)  # (U, c, H, W)
    except DataError as exc:
        return item._replace(fields=None, layout=None, error=str(exc))
    return item._replace(fields=planes.permute(0, 2, 3, 1).contiguous())
