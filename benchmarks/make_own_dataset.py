"""A small dataset as a user brings one, for trying the README's "Your own small dataset" commands: 60 clips in
3 class folders (DriftUp, DriftDown, ZoomIn: no left/right classes, so flips are safe), 10 recordings of 2 clips
per class named <class>_take<N>_clip<M>.avi, no split files and no _gNN_ token (group them with
--group-regex '^(.*)_clip[0-9]+$'). The videos are data_manifest.synth's (160x120, 24 frames).

    python benchmarks/make_own_dataset.py MYDATA
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from data_manifest.synth import make_synthetic

CLASSES = ("DriftUp", "DriftDown", "ZoomIn")


def main(out: Path) -> None:
    if out.exists():
        sys.exit(f"{out} exists; give a new folder")
    source = out.parent / f".{out.name}.synth"
    make_synthetic(source, classes=8, videos_per_class=20, size=(160, 120), frames=24)  # 8: ZoomIn is the 7th
    try:
        for cls in CLASSES:
            (out / cls).mkdir(parents=True)
            for video in sorted((source / "UCF-101" / cls).glob("*.avi")):
                group, clip = re.search(r"_g(\d+)_c(\d+)", video.stem).groups()
                shutil.copy(video, out / cls / f"{cls.lower()}_take{int(group)}_clip{int(clip)}.avi")
    finally:
        shutil.rmtree(source)
    print(f"{sum(1 for _ in out.rglob('*.avi'))} videos in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
