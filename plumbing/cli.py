"""What the four command lines share: exit statuses, and domain errors and Ctrl-C each turned into one line.

Exit status of every command: 0 success; 1 a problem of the data or the files (the message names the file
and the fix); 2 misuse (a bad option, config key or value, like click's own checks); 130 interrupted by
Ctrl-C (128 + SIGINT, as a shell reports it).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def one_line_errors(failures: tuple[type[BaseException], ...], usage: tuple[type[BaseException], ...] = (),
                    interrupted: str | Callable[[], str] = "nothing was written; re-run the same command"
                    ) -> Iterator[None]:
    """Map the library's errors to click's: ``usage`` types to a usage error (exit 2), ``failures`` to a
    one-line error (exit 1); Ctrl-C to "interrupted: <what was kept and how to go on>" (exit 130) instead of
    click's bare "Aborted!". ``interrupted`` may be a function, called only then (it can look at the files).

    Only rank 0 of a torchrun job prints the Ctrl-C line: a terminal's Ctrl-C reaches every process."""
    try:
        yield
    except usage as exc:
        raise click.UsageError(str(exc)) from exc
    except failures as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            message = interrupted() if callable(interrupted) else interrupted
            click.echo(f"\ninterrupted: {message}", err=True)
        sys.exit(EXIT_INTERRUPTED)
