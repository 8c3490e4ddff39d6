"""What every executor's worker processes share: how a worker starts (decoder messages as the user wants
them, and an end when the calling process dies) and how a process that ended is described."""
from __future__ import annotations

import os
import signal
import threading
import time


def exit_with_parent(parent: int) -> None:
    """End this worker process once ``parent`` is no longer its parent (it died)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)  # a worker's own process: nothing of the store is written here, so nothing is lost

    threading.Thread(target=watch, daemon=True, name="flowprep-parent-watch").start()


def start_worker(parent: int) -> None:
    """The start of every worker process of this machine (a pool initializer, a process's first call):
    the decoder switch (flowprep.video.decode.quiet_decoders: quiet unless the user set it; a worker inherits
    the calling process's environment), Ctrl-C left to the calling process, and the end with ``parent``.

    A terminal's Ctrl-C reaches the whole process group. The calling process answers it (it says what is
    kept and kills its workers: every executor does in its clean-up); a worker that took it too would print
    a KeyboardInterrupt traceback from wherever it was, the pool's own loop included."""
    from flowprep.video.decode import quiet_decoders

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_decoders()
    exit_with_parent(parent)


def exit_text(code: int | None) -> str:
    """How a process ended, for a failure reason: 'signal 6, SIGABRT' or 'exit status 1'."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
        oom = "; the system may have run out of memory" if -code == signal.SIGKILL else ""
        return f"signal {-code}, {name}{oom}"
    return f"exit status {code}"
