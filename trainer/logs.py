"""The per-epoch table: console rows, ``log.csv`` and ``curves.png`` (matplotlib imported only here)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from data_manifest.atomic import atomic_write

COLUMNS = ("epoch", "iteration", "lr", "loss", "top1", "top5", "val_loss", "val_top1", "val_top5",
           "batch_time", "data_time", "data_wait", "samples_per_s", "epoch_time")
# Console: (column, header, format)
_TABLE = (("epoch", "epoch", "{:>5d}"), ("iteration", "iter", "{:>7d}"), ("lr", "lr", "{:>9.2e}"),
          ("loss", "loss", "{:>7.4f}"), ("top1", "top1", "{:>6.1f}"), ("top5", "top5", "{:>6.1f}"),
          ("val_top1", "v-top1", "{:>6.1f}"), ("val_top5", "v-top5", "{:>6.1f}"),
          ("batch_time", "batch-s", "{:>8.3f}"), ("data_time", "data-s", "{:>7.3f}"),
          ("data_wait", "wait%", "{:>6.1f}"), ("samples_per_s", "smp/s", "{:>7.1f}"))


def header() -> str:
    widths = [len(fmt.format(0 if col in ("epoch", "iteration") else 0.0)) for col, _, fmt in _TABLE]
    return " ".join(f"{h:>{w}}" for (_, h, _), w in zip(_TABLE, widths))


def format_row(row: dict[str, Any]) -> str:
    """One console line of the table; missing values (no validation this epoch) print as '-'."""
    out = []
    for col, _, fmt in _TABLE:
        value = row.get(col)
        width = len(fmt.format(0 if col in ("epoch", "iteration") else 0.0))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(f"{'-':>{width}}")
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


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(path: Path, rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """Training curve PNG: loss, top-1 (train and hold-out) and learning rate per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot(epochs, [r["loss"] for r in rows], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val), "o-", label="hold-out")
    ax_loss.set_title("loss")
    ax_acc.plot(epochs, [r["top1"] for r in rows], label="train top-1")
    val = [(r["epoch"], r["val_top1"]) for r in rows if r.get("val_top1") is not None]
    if val:
        ax_acc.plot(*zip(*val), "o-", label="hold-out top-1")
    ax_acc.set_title("top-1 (%)")
    ax_lr.plot(epochs, [r["lr"] for r in rows])
    ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    atomic_write(path, png.getvalue())
