"""Progress of long work, readable on a terminal and in a log file.

On a terminal: a tqdm bar (rate, ETA) redrawn in place. When the stream is not a terminal (redirected to a
file, a pipe, a batch system's log): no carriage returns, one plain line every ``every`` seconds (default
LOG_EVERY_S) and one at the end, e.g. ``extract: 12/71 videos (17%), 0.42 videos/s, ETA 2m20s, failed=1``.
With ``leave=False`` the bar is erased when it closes and no closing line is written: for loops whose
caller prints its own summary (a training epoch, followed by its row of the table).
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LOG_EVERY_S = 30.0  # seconds between plain lines when the output is not a terminal


def format_seconds(seconds: float) -> str:
    """3725 -> '1h02m05s', 140 -> '2m20s', 7.2 -> '7s'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class Progress:
    """Counts finished items of a known total and shows rate and ETA; ``enabled=False`` shows nothing.

    Use as a context manager, or call close(). ``update(n, **postfix)`` adds n finished items; postfix
    values (failed=1, frames_s="12.3") are shown after the rate.
    """

    def __init__(self, total: int, unit: str = "item", desc: str = "", enabled: bool = True,
                 file: TextIO | None = None, every: float | None = None, terminal: bool | None = None,
                 leave: bool = True):
        self.total, self.unit, self.desc = int(total), unit, desc
        self.file = file if file is not None else sys.stderr
        self.enabled = enabled
        self.every = LOG_EVERY_S if every is None else every  # read at each call: a caller may change it
        self.leave = leave
        self.count = 0
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()
        self._last_line = self.start
        self._bar = None
        self._closed = False
        if enabled and (is_terminal(self.file) if terminal is None else terminal):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=desc or None, dynamic_ncols=True, file=self.file,
                             leave=leave)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(self.postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.every:
            self._last_line = now
            self._write(self.line())

    def line(self) -> str:
        """The plain progress line: done/total (share), rate, ETA (or elapsed time at the end), postfix."""
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.count}/{self.total} {self.unit}s{share}", f"{rate:.2f} {self.unit}s/s"]
        if self.count < self.total:
            parts.append(f"ETA {format_seconds((self.total - self.count) / rate)}" if rate > 0 else "ETA ?")
        else:
            parts.append(f"took {format_seconds(elapsed)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def write(self, message: str) -> None:
        """A message on its own line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            self._write(message)

    def _write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.total and self.leave:
            self._write(self.line())
