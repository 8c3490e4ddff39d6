"""trainer.logs: curves.png explains itself (log-scale loss, labelled axes, chance, what was not drawn)."""
from __future__ import annotations

import math

import pytest


def _rows_with_a_spike():
    """30 epochs: training loss 2.3 -> 0.1, a validation every 3 epochs, one hold-out spike of 5,147 and
    one NaN hold-out loss."""
    rows = []
    for e in range(1, 31):
        val = 2.0 * math.exp(-e / 10) + 0.4 if e % 3 == 0 else None
        val = {12: 5147.0, 21: float("nan")}.get(e, val)
        rows.append({"epoch": e, "loss": 2.3 * math.exp(-e / 8) + 0.05, "top1": 10.0 + 3 * e, "lr": 0.01,
                     "val_loss": val, "val_top1": None if val is None else 5.0 + 2.5 * e})
    return rows


def test_finite_positive_keeps_what_a_log_axis_can_draw_and_names_the_rest():
    from trainer.logs import finite_positive

    rows = [{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": None}, {"epoch": 3, "val_loss": float("nan")},
            {"epoch": 4, "val_loss": 0.0}, {"epoch": 5, "val_loss": float("inf")}, {"epoch": 6, "val_loss": 0.5}]
    xs, ys, notes = finite_positive(rows, "val_loss")
    assert (xs, ys) == ([1, 6], [2.0, 0.5])
    assert notes == ["hold-out loss nan at epoch 3", "hold-out loss 0 at epoch 4", "hold-out loss inf at epoch 5"]


def test_curves_loss_axis_is_logarithmic_so_a_spike_leaves_the_training_curve_readable(tmp_path):
    from trainer.logs import curves_figure, plot_curves

    rows = _rows_with_a_spike()
    fig = curves_figure(rows, "temporal stream, split 1, resnet18", classes=101)
    ax_loss, ax_acc, ax_lr = fig.axes
    assert (ax_loss.get_yscale(), ax_acc.get_yscale(), ax_lr.get_yscale()) == ("log", "linear", "log")
    assert ax_loss.get_ylabel() == "cross-entropy (log scale)" and ax_acc.get_ylabel() == "top-1 accuracy (%)"
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    # the training curve (0.10 .. 1.9) spans a fair share of the loss axis despite the spike of 5,147
    low, high = ax_loss.get_ylim()
    train = [r["loss"] for r in rows]
    share = (math.log(max(train)) - math.log(min(train))) / (math.log(high) - math.log(low))
    assert low < min(train) and high > 5147 and share > 0.25, (low, high, share)
    labels = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert labels == ["train (mean over the epoch)", "hold-out (video level, at validations)",
                      "uniform guess (ln 101 = 4.62)"]
    assert "chance (100 / 101 = 1.0%)" in [t.get_text() for t in ax_acc.get_legend().get_texts()]
    assert "not drawn: hold-out loss nan at epoch 21" in [t.get_text() for t in ax_loss.texts]
    plot_curves(tmp_path / "curves.png", rows, classes=101)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_console_hides_top5_with_five_classes_or_fewer():
    from trainer.logs import format_row, header

    row = {"epoch": 1, "iteration": 10, "lr": 0.01, "loss": 0.5, "top1": 90.0, "top5": 100.0, "val_top1": 80.0,
           "val_top5": 100.0, "batch_time": 0.1, "data_time": 0.01, "data_wait": 0.1, "samples_per_s": 123.0}
    assert "top5" in header() and "v-top5" in header(101) and "top5" not in header(5)
    assert len(format_row(row, 3).split()) == len(header(3).split()) == len(header().split()) - 2
    assert format_row(row).split()[5] == "100.0" and "100.0" not in format_row(row, 5)


def _rows():
    return [{"epoch": e, "iteration": 10 * e, "lr": 0.01, "loss": 1.0 / e, "top1": 50.0 + e,
             "val_loss": 2.0 / e if e % 2 == 0 else None, "val_top1": 40.0 + e if e % 2 == 0 else None}
            for e in (1, 2, 3)] + [{"epoch": 4, "loss": float("nan"), "lr": 0.01}]


def test_without_tensorboard_the_board_writes_nothing_and_says_so_once(tmp_path, monkeypatch):
    import sys

    from trainer.logs import BOARD_INSTALL, Board

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    board = Board(tmp_path)
    assert not board.active and BOARD_INSTALL in board.note and board.note.startswith("note: no TensorBoard")
    for row in _rows():
        board.add(row)
    board.close()
    assert list(tmp_path.iterdir()) == []


def test_with_tensorboard_the_board_writes_the_rows_as_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.logs import Board

    board = Board(tmp_path / "spatial-split1")
    assert board.active and f"tensorboard --logdir {tmp_path}" in board.note
    for row in _rows():
        board.add(row)
    board.close()
    events = EventAccumulator(str(tmp_path / "spatial-split1"))
    events.Reload()
    scalars = lambda tag: [(e.step, round(e.value, 4)) for e in events.Scalars(tag)]  # noqa: E731
    assert scalars("loss/train") == [(1, 1.0), (2, 0.5), (3, 0.3333)]  # epoch 4's NaN is left out
    assert scalars("loss/hold-out") == [(2, 1.0)] and scalars("top1/hold-out") == [(2, 42.0)]
    assert "top5/train" not in events.Tags()["scalars"]  # no top5 in these rows
