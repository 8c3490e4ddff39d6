"""Where `extract --scheduler` sends the work: the address checked (`parse_scheduler`, `check_options`:
misuse named before any file is touched, without importing Dask), the scheduler probed with a bounded Dask
handshake (`probe`), and the connection (`connect`). flowprep.executors.cluster runs the tasks there."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from flowprep.errors import ClusterError, OptionError

LOCAL = "local:"
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # Dask's network protocols for a scheduler address
DEFAULT_PORT = 8786  # `dask scheduler`'s default
INSTALL = "pip install 'twostream-toolkit[dask]'"
CONNECT_TIMEOUT_S = 10.0  # the TCP connect, Dask's handshake and the Client's connection each


@dataclass(frozen=True)
class Scheduler:
    """Where `--scheduler` says the cluster is: a scheduler's address, or ``local`` worker processes here."""

    address: str | None  # tcp://HOST:PORT ...; None for a LocalCluster
    local: int = 0  # worker processes of the LocalCluster

    def __str__(self) -> str:
        return self.address or f"{LOCAL}{self.local}"


def parse_scheduler(text: str) -> Scheduler:
    """``local:N`` or a Dask scheduler address (``tcp://HOST:PORT``, tls://, ws://, wss://, ucx://; a bare
    HOST:PORT means tcp). OptionError names what is accepted."""
    accepted = "give tcp://HOST:PORT (a running `dask scheduler`) or local:N (N worker processes here)"
    text = text.strip()
    if text.startswith(LOCAL):
        n = text[len(LOCAL):]
        if not n.isdigit() or int(n) < 1:
            raise OptionError(f"--scheduler {text}: N of local:N must be a whole number of workers >= 1")
        return Scheduler(None, int(n))
    url = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = url.port
    except ValueError:
        raise OptionError(f"--scheduler {text}: the port is not a number from 1 to 65535; {accepted}") from None
    if url.scheme not in SCHEMES or not url.hostname or url.path not in ("", "/") or url.query or port == 0:
        raise OptionError(f"--scheduler {text!r} is not a Dask scheduler address; {accepted}")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return Scheduler(f"{url.scheme}://{host}:{port or DEFAULT_PORT}")


def check_options(cfg) -> None:
    """Misuse of --scheduler, named before any file is touched (OptionError): a bad address, Dask not
    installed, options that only mean something for this machine's own devices."""
    from importlib.util import find_spec

    where = parse_scheduler(cfg.scheduler)
    missing = [m for m in ("dask", "distributed") if find_spec(m) is None]
    if missing:
        raise OptionError(f"--scheduler needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: {INSTALL}")
    if cfg.device == "auto":
        raise OptionError("--device auto would be decided by this machine, not the workers; with --scheduler "
                          "give --device cpu or --device cuda")
    if cfg.gpus:
        raise OptionError("--gpus picks devices of this machine; with --scheduler each GPU is a Dask worker "
                          "of its own (start one worker per GPU)")
    if cfg.device == "cuda" and where.local:
        raise OptionError("--scheduler local:N with --device cuda would put every worker on the same GPU; "
                          "leave out --scheduler (the local run already uses one process per GPU)")


def probe(where: Scheduler) -> None:
    """ClusterError, before any file is touched, when nothing listens at the scheduler's TCP address, or
    something does that is not a Dask scheduler: Dask's handshake, bounded by CONNECT_TIMEOUT_S (Dask's own
    connect waits for the handshake's answer without a limit, and reads any answer as a frame length: an
    HTTP server's reply asks for exabytes)."""
    import socket

    if where.local or not where.address.startswith("tcp://"):  # tls/ws need the security settings: Client's job
        return
    url = urlsplit(where.address)
    fix = "start it (`dask scheduler`) or check --scheduler"
    try:
        socket.create_connection((url.hostname, url.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {where.address} ({exc.strerror or exc}); "
                           f"{fix}") from None
    try:
        _handshake(where.address)
    except TimeoutError:
        raise ClusterError(f"{where.address} accepts connections but gives no Dask handshake within "
                           f"{CONNECT_TIMEOUT_S:g} s: it is not a Dask scheduler (or a hung one); {fix} (a "
                           f"scheduler listens on port {DEFAULT_PORT} by default)") from None
    except Exception as exc:  # MemoryError for an HTTP reply read as a frame length, a parse error...
        why = ("its reply is not Dask's protocol: an HTTP server?" if isinstance(exc, MemoryError) else
               f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}")
        raise ClusterError(f"{where.address} answers, but not as a Dask scheduler ({why}); "
                           f"{fix} (a scheduler listens on port {DEFAULT_PORT} by default; 8787 is its "
                           "dashboard)") from None


def _handshake(address: str) -> None:
    """Open a Dask connection to ``address`` and close it again; TimeoutError after CONNECT_TIMEOUT_S. Runs
    its own event loop in a thread of its own, so a caller inside a running loop (a notebook) can use it."""
    import asyncio
    import threading

    from distributed.comm import connect as comm_connect

    async def shake() -> None:
        comm = await asyncio.wait_for(comm_connect(address, timeout=CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S)
        await comm.close()

    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(shake())
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="flowprep-dask-handshake")
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 5.0)
    if thread.is_alive() or (failed and isinstance(failed[0], asyncio.TimeoutError)):  # TimeoutError from 3.11
        raise TimeoutError
    if failed:
        raise failed[0]


class connect:
    """``with connect(where) as client``: a `distributed.Client` of the scheduler, or of a LocalCluster
    started here (on 127.0.0.1, one thread per worker) and closed on exit. ClusterError when the scheduler
    cannot be reached. Prints the cluster and its dashboard link to stderr."""

    def __init__(self, where: Scheduler):
        self.where, self.cluster, self.client = where, None, None

    def __enter__(self):
        from distributed import Client, LocalCluster

        if self.where.local:
            self.cluster = LocalCluster(n_workers=self.where.local, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address="127.0.0.1:0")
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.where.address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                why = " ".join(str(exc).split()) or type(exc).__name__
                raise ClusterError(f"cannot reach the Dask scheduler at {self.where.address} ({why}); start it "
                                   "(`dask scheduler`) or check --scheduler") from None
        link = self.client.dashboard_link if _serves_dashboard(self.client) else None
        print(f"Dask scheduler {self.client.scheduler.address}; dashboard: "
              f"{link or 'none (install bokeh where the scheduler runs to have one)'}", file=sys.stderr)
        return self.client

    def __exit__(self, exc_type, *exc) -> None:
        import logging

        # the error that ends the run is reported once, not with Dask's tracebacks of the reconnection that
        # closing cancels (distributed's loggers have levels of their own: each one is set)
        names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]
        levels = {n: logging.getLogger(n).level for n in names} if exc_type is not None else {}
        for name in levels:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        try:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _serves_dashboard(client) -> bool:
    try:
        return "dashboard" in client.scheduler_info(n_workers=0).get("services", {})
    except Exception:  # an old or unusual scheduler: the link is still Dask's best guess
        return True
