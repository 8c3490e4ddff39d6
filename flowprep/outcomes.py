"""What goes into and comes out of the per-video work every executor runs: a task type per kind of work,
the outcomes, and the types of the work and of the executors that run it.

    extract  VideoTask (a video file)                  -> EncodedVideo or Failure   (flowprep.work)
    import   ImportTask (an RGB folder + flow folders)  -> EncodedVideo or Failure   (flowprep.interop.importing)
    export   ExportTask (the output folder to write)    -> an export's result or Failure (flowprep.interop.exporting)

Every task names its video (``video_id``, ``relpath``) and, for messages, what it reads or writes
(``source``); an executor needs nothing else of it. Nothing here touches a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar, Union

import numpy as np


class Task(Protocol):
    """What an executor needs of any task: the video and, for a failure's reason, what it reads or writes."""

    video_id: str
    relpath: str

    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class VideoTask:
    """One video to extract: the file to read and what the store records about its place in the dataset."""

    video_id: str
    path: str  # the video file (absolute, or relative to the working folder)
    relpath: str  # POSIX path relative to the dataset root, as the manifest and the record hold it
    class_name: str
    label: int

    @property
    def source(self) -> str:
        return self.path


@dataclass(frozen=True)
class ImportTask:
    """One video to import: its RGB folder, the folders of its flow x and y images, and those folders relative
    to the --frames and --flow roots (for the record)."""

    video_id: str
    relpath: str
    class_name: str
    label: int
    frames: str  # the folder of its RGB images
    flow_x: str
    flow_y: str
    rgb_rel: str = ""
    flow_rels: tuple[str, str] = ("", "")
    problem: str = ""  # why it cannot be imported, known from its folders alone (flowprep.interop.finding)

    @property
    def source(self) -> str:
        return self.frames


@dataclass(frozen=True)
class ExportTask:
    """One video to export: the folder to write its images into."""

    video_id: str
    relpath: str
    class_name: str
    label: int
    folder: str  # OUT/rawframes/<Class>/<video>

    @property
    def source(self) -> str:
        return self.folder


@dataclass
class EncodedVideo:
    """One finished video, ready to be written: its record and its stored images in order.

    rgb, flow: per stored image, the JPEG bytes ((n,) uint8; codecs jpeg, jpeg-xy) or the pixels
    ((H, W, 3) / (H, W, 2) uint8; codec raw); with jpeg-xy, two images per flow field, x then y.
    rgb_crcs, flow_crcs: (len(rgb),), (len(flow),) uint32 CRC-32 of each image as stored.
    """

    video_id: str
    record: dict[str, Any]
    rgb: list[np.ndarray]
    flow: list[np.ndarray]
    rgb_crcs: np.ndarray
    flow_crcs: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.rgb) + sum(a.nbytes for a in self.flow)


@dataclass(frozen=True)
class Failure:
    """A video that could not be extracted, imported or exported, with the reason (it names the file)."""

    video_id: str
    path: str  # relpath
    reason: str


Outcome = Union[EncodedVideo, Failure]  # of extract and import: what a store is built from

TaskT = TypeVar("TaskT")
SettingsT = TypeVar("SettingsT")
OutcomeT = TypeVar("OutcomeT")
# The per-video work an executor runs, work(task, settings) -> outcome (never raising for bad input), and an
# executor: executor(tasks, settings, on_outcome) runs the work of every task and hands each outcome to
# on_outcome in the calling process. E.g. Work[VideoTask, RunSettings, Outcome] (extract),
# Work[ImportTask, ImportSettings, Outcome] (import), Work[ExportTask, ExportSettings, ExportedVideo | Failure].
Work = Callable[[TaskT, SettingsT], OutcomeT]
Executor = Callable[[list[TaskT], SettingsT, Callable[[OutcomeT], None]], None]


@dataclass
class Tally:
    """Counts of a run's outcomes, for the summary and the progress display."""

    written: list[str] = field(default_factory=list)  # ids of the videos written as parts
    failed: list[Failure] = field(default_factory=list)
    frames: int = 0
    flows: int = 0
    flow_seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        if isinstance(outcome, Failure):
            self.failed.append(outcome)
            return
        self.written.append(outcome.video_id)
        self.frames += outcome.record["num_frames"]
        self.flows += outcome.record["num_flows"]
        self.flow_seconds += outcome.record["flow_seconds"]
