"""Dataset manifests for two-stream action recognition: UCF101 / HMDB51 / folder datasets -> one record per video.

Importing this package loads no OpenCV or torch; the synthetic dataset writer imports cv2 when called.
"""
from data_manifest.build import build_manifest
from data_manifest.errors import ManifestError, UnknownVideoError
from data_manifest.grouping import GroupRule, SplitRule
from data_manifest.manifest import SPLIT_NONE, SPLIT_TEST, SPLIT_TRAIN, SPLIT_UNUSED, Manifest, VideoRecord
from data_manifest.synth import make_synthetic

__all__ = ["Manifest", "VideoRecord", "build_manifest", "ManifestError", "UnknownVideoError", "SPLIT_TRAIN",
           "SPLIT_TEST", "SPLIT_UNUSED", "SPLIT_NONE", "make_synthetic", "GroupRule", "SplitRule"]
