"""The per-epoch table: console rows, ``log.csv``, ``curves.png`` (matplotlib imported only here) and, when the
optional ``tensorboard`` package is installed, TensorBoard event files beside log.csv."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from plumbing.atomic import atomic_write

COLUMNS = ("epoch", "iteration", "lr", "loss", "top1", "top5", "val_loss", "val_top1", "val_top5",
           "batch_time", "data_time", "data_wait", "samples_per_s", "epoch_time")
# Console: (column, header, format)
_TABLE = (("epoch", "epoch", "{:>5d}"), ("iteration", "iter", "{:>7d}"), ("lr", "lr", "{:>9.2e}"),
          ("loss", "loss", "{:>7.4f}"), ("top1", "top1", "{:>6.1f}"), ("top5", "top5", "{:>6.1f}"),
          ("val_top1", "v-top1", "{:>6.1f}"), ("val_top5", "v-top5", "{:>6.1f}"),
          ("batch_time", "batch-s", "{:>8.3f}"), ("data_time", "data-s", "{:>7.3f}"),
          ("data_wait", "wait%", "{:>6.1f}"), ("samples_per_s", "smp/s", "{:>7.1f}"))


TOP5_COLUMNS = ("top5", "val_top5")


def _table(classes: int | None) -> tuple[tuple[str, str, str], ...]:
    """The console columns: without top-5 where there are 5 classes or fewer (it is then always 100)."""
    if classes is not None and classes <= 5:
        return tuple(c for c in _TABLE if c[0] not in TOP5_COLUMNS)
    return _TABLE


def _width(col: str, fmt: str) -> int:
    return len(fmt.format(0 if col in ("epoch", "iteration") else 0.0))


def header(classes: int | None = None) -> str:
    """The console table's header line (``classes``: see _table)."""
    return " ".join(f"{h:>{_width(col, fmt)}}" for col, h, fmt in _table(classes))


def format_row(row: dict[str, Any], classes: int | None = None) -> str:
    """One console line of the table; missing values (no validation this epoch) print as '-'."""
    out = []
    for col, _, fmt in _table(classes):
        value = row.get(col)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(f"{'-':>{_width(col, fmt)}}")
        else:
            out.append(fmt.format(value * 100 if col == "data_wait" else value))
    return " ".join(out)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """All rows, rewritten atomically (the history lives in the checkpoint, so a resumed run has no gaps)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    atomic_write(path, buf.getvalue())


# TensorBoard scalar tag of each log.csv column drawn live (train and hold-out share a chart)
BOARD_TAGS = {"loss": "loss/train", "val_loss": "loss/hold-out", "top1": "top1/train", "val_top1": "top1/hold-out",
              "top5": "top5/train", "val_top5": "top5/hold-out", "lr": "lr", "samples_per_s": "speed/samples_per_s",
              "data_wait": "speed/data_wait"}
BOARD_INSTALL = "pip install 'twostream-toolkit[tensorboard]'"


class Board:
    """TensorBoard event files in the run directory, one scalar per log.csv column and epoch (step = epoch).
    Without the ``tensorboard`` package nothing is written and ``note`` says so once."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch.utils.tensorboard needs the tensorboard package
            self.note = (f"note: no TensorBoard event files ({BOARD_INSTALL} to watch the curves live); "
                         "log.csv and curves.png are written as always")
            return
        self._writer = SummaryWriter(log_dir=str(self.run_dir))
        self.note = f"TensorBoard: event files in {self.run_dir}; watch with: tensorboard --logdir {self.run_dir.parent}"

    @property
    def active(self) -> bool:
        return self._writer is not None

    def add(self, row: dict[str, Any]) -> None:
        """The row's finite values as scalars at step ``row['epoch']``, flushed so a running TensorBoard sees them."""
        if self._writer is None:
            return
        for col, tag in BOARD_TAGS.items():
            v = row.get(col)
            if v is not None and math.isfinite(v):
                self._writer.add_scalar(tag, v, int(row["epoch"]))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def finite_positive(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[str]]:
    """(epochs, values) of the rows whose ``key`` can be drawn on a log axis, and a note for each one that
    cannot (NaN, infinite, zero or negative): e.g. ``"hold-out loss nan at epoch 3"``. Rows without the
    key (no validation that epoch) are left out without a note."""
    xs, ys, notes = [], [], []
    for r in rows:
        v = r.get(key)
        if v is None:
            continue
        if math.isfinite(v) and v > 0:
            xs.append(r["epoch"])
            ys.append(v)
        else:
            notes.append(f"{'hold-out' if key.startswith('val_') else 'train'} loss {v:g} at epoch {r['epoch']}")
    return xs, ys, notes


def curves_figure(rows: Sequence[dict[str, Any]], title: str = "", classes: int | None = None):
    """The figure of curves.png: loss (log scale), top-1 and learning rate per epoch (matplotlib Figure).

    The loss axis is logarithmic: one hold-out spike (a loss of 5,000 after a bad step) would otherwise
    squash the training curve flat against zero. ``classes``: draws chance (a uniform guess: loss ln C,
    top-1 100/C %).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, MaxNLocator

    fig = Figure(figsize=(15, 5.2))
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in rows]
    notes = []
    for key, label, style in (("loss", "train (mean over the epoch)", "-"),
                              ("val_loss", "hold-out (video level, at validations)", "o-")):
        xs, ys, dropped = finite_positive(rows, key)
        notes += dropped
        if xs:
            ax_loss.plot(xs, ys, style, label=label)
    if classes and classes > 1:
        ax_loss.axhline(math.log(classes), color="grey", ls=":", label=f"uniform guess (ln {classes} = "
                                                                      f"{math.log(classes):.2f})")
        ax_acc.axhline(100.0 / classes, color="grey", ls=":", label=f"chance (100 / {classes} = "
                                                                    f"{100.0 / classes:.1f}%)")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("cross-entropy (log scale)")
    ax_loss.set_title("loss, on a log scale: a spike does not flatten the rest", fontsize=10)
    if notes:
        ax_loss.text(0.01, 0.01, "not drawn: " + "; ".join(notes[:3]) + (" ..." if len(notes) > 3 else ""),
                     transform=ax_loss.transAxes, fontsize=7, color="firebrick", va="bottom")
    ax_acc.plot(epochs, [r["top1"] for r in rows], label="train (augmented crops)")
    val = [(r["epoch"], r["val_top1"]) for r in rows if r.get("val_top1") is not None]
    if val:
        ax_acc.plot(*zip(*val), "o-", label="hold-out (video level)")
    ax_acc.set_ylim(0, 100)
    ax_acc.set_ylabel("top-1 accuracy (%)")
    ax_acc.set_title("top-1 accuracy", fontsize=10)
    ax_lr.plot(epochs, [r["lr"] for r in rows], label="at the epoch's last step")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate (log scale)")
    ax_lr.set_title("learning rate", fontsize=10)
    for ax in (ax_loss, ax_lr):  # plain numbers (0.5, 2, 1e+03), not 2 x 10^0, also within one decade
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.08, which="minor")
        if ax.get_legend_handles_labels()[0]:  # below the axes: never over a curve (a spike, say)
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(path: Path, rows: Sequence[dict[str, Any]], title: str = "", classes: int | None = None) -> None:
    """Write curves.png (see curves_figure) atomically. matplotlib is imported only here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = curves_figure(rows, title, classes)
    FigureCanvasAgg(fig)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    atomic_write(path, png.getvalue())
