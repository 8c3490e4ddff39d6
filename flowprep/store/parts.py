"""The parts folder beside a store being written (``<out>.parts/``): finished videos, and the settings and
class list the unfinished work was made with. The only code that touches that folder.

Each finished video is one part file, ``<key>.h5``, written under a temporary name, fsynced and renamed, so
a part exists whole or not at all. Failures are not kept here: they are retried by every run, and the run
that saw them records them in the store. ``config.json`` and
``classes.json`` pin the settings and classes of the unfinished work: a run with others is refused, since
the parts would no longer fit the store. Only the process that holds the store's writer lock uses it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from plumbing.atomic import atomic_write
from flowprep.errors import StoreError
from flowprep.store.format import as_str, check_record, is_disk_full, part_key
from flowprep.store.writer import finish_file, new_file, write_video
from flowprep.outcomes import EncodedVideo


class DiskFull(StoreError):
    """The disk (or quota) is full: the run stops; what is finished stays for the next run."""


def class_change(old: list[str], new: list[str]) -> str:
    """How two class lists differ, for a message; empty when they are equal."""
    if old == new:
        return ""
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    parts = ([f"added {', '.join(added)}"] if added else []) + ([f"removed {', '.join(removed)}"] if removed else [])
    return "; ".join(parts) or "the same classes in another order"


class Parts:
    """``<store>.parts/``: see the module docstring. ``config``: the recorded settings of the run (the
    settings' recorded(), whose codec the parts are written with)."""

    def __init__(self, store: Path, config: dict[str, Any]):
        self.store = Path(store)
        self.folder = self.store.with_name(self.store.name + ".parts")
        self.config = config

    def path(self, video_id: str) -> Path:
        return self.folder / f"{part_key(video_id)}.h5"

    def open(self, classes: list[str], incompatibilities: Callable[[dict, dict], list[str]]) -> None:
        """Create the folder, or check that its unfinished work was made with these settings and classes;
        remove what a killed run left half-written. StoreError names the difference and the fix."""
        checks = (("config.json", self.config, lambda a, b: "; ".join(incompatibilities(a, b)),
                   "made with other settings"),
                  ("classes.json", classes, class_change, "for a dataset with other classes"))
        try:
            self.folder.mkdir(exist_ok=True)
            for name, now, differ, what in checks:
                file = self.folder / name
                if not file.exists():
                    atomic_write(file, json.dumps(now, indent=1, sort_keys=True))
                    continue
                try:
                    before = json.loads(file.read_text())
                except ValueError:
                    before = None
                if change := ("unreadable" if before is None else differ(before, now)):
                    raise StoreError(f"{self.folder} holds unfinished work {what} ({change}); pass --overwrite "
                                     "to start over")
            for stale in self.folder.glob("*.tmp"):  # a killed run's temporaries, never renamed
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write {self.folder}: {exc.strerror or exc}; choose an --out in a folder "
                             "you can write to") from exc

    def records(self, video_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """The record of each finished part among ``video_ids``; None for a part that cannot be read."""
        return {vid: self.record(vid) for vid in video_ids if self.path(vid).exists()}

    def record(self, video_id: str) -> dict[str, Any] | None:
        """The record of a video's finished part, or None when there is none or it cannot be read."""
        import h5py

        try:
            with h5py.File(self.path(video_id), "r") as f:
                if not f.attrs.get("complete", False):
                    return None
                return check_record(json.loads(as_str(f["videos"][video_id].attrs["record"])), self.path(video_id),
                                    video_id)
        except Exception:  # a missing or damaged part is not worth a stopped run: the video is redone
            return None

    def drop(self, video_ids: Iterable[str]) -> None:
        for vid in video_ids:
            self.path(vid).unlink(missing_ok=True)

    def write(self, video: EncodedVideo) -> Path:
        """Write one finished video as its part file (temporary name, fsync, rename). DiskFull when the
        disk is full, StoreError for other write errors; the temporary file never stays behind."""
        final = self.path(video.video_id)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
        try:
            f = new_file(tmp, "part", self.config)
            try:
                write_video(f.create_group("videos").create_group(video.video_id), video, self.config["codec"])
            except BaseException:
                f.close()
                raise
            return finish_file(f, tmp, final)
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise DiskFull(f"no space left on device writing {tmp}; free space and re-run the same command: "
                               f"the videos finished so far are kept in {self.folder}") from exc
            raise StoreError(f"writing {tmp} failed ({exc}); fix the problem and re-run the same command") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        """Remove the folder and everything in it (after assembly, or for --overwrite)."""
        shutil.rmtree(self.folder, ignore_errors=True)
