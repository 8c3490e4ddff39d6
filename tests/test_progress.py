"""plumbing.progress: plain periodic lines when the output is not a terminal, a bar when it is."""
import io

from plumbing import progress
from plumbing.progress import Progress, format_seconds


def test_format_seconds_by_hand():
    assert format_seconds(7.2) == "7s"
    assert format_seconds(140) == "2m20s"
    assert format_seconds(3725) == "1h02m05s"


def test_a_log_file_gets_plain_lines_without_carriage_returns():
    out = io.StringIO()
    with Progress(4, unit="video", desc="extract", file=out, every=0.0) as bar:
        for _ in range(4):
            bar.update(1, failed=0)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("extract: 1/4 videos (25%)") and "ETA" in lines[0] and "failed=0" in lines[0]
    assert lines[-1].startswith("extract: 4/4 videos (100%)") and "took" in lines[-1]


def test_lines_are_spaced_by_the_interval():
    out = io.StringIO()
    with Progress(100, file=out, every=3600.0) as bar:
        for _ in range(100):
            bar.update()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the closing line
    assert "100/100 items" in out.getvalue()


def test_disabled_prints_nothing_and_a_terminal_gets_a_bar():
    quiet = io.StringIO()
    with Progress(3, file=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
    tty = io.StringIO()
    with Progress(3, file=tty, terminal=True) as bar:
        bar.update(3)
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()


def test_leave_false_writes_no_closing_line_and_the_interval_default_is_read_at_each_call(monkeypatch):
    out = io.StringIO()
    with Progress(3, unit="iteration", desc="epoch 1/2", file=out, every=3600.0, leave=False) as bar:
        bar.update(3)
    assert out.getvalue() == ""  # the caller prints its own summary
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with Progress(2, unit="iteration", desc="epoch 2/2", file=out, leave=False) as bar:
        bar.update(1, loss="0.5")
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 2/2: 1/2 iterations (50%)") and lines[0].endswith("loss=0.5")
    assert len(lines) == 2 and "\r" not in out.getvalue()
