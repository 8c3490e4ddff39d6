"""The data-manifest command line through click's CliRunner: exit codes, summaries and error messages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from data_manifest import Manifest, build_manifest
from data_manifest.cli import main
from tests.fake_datasets import make_fake_ucf101, ucf_name

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_build_writes_manifest_and_summary(tmp_path):
    make_fake_ucf101(tmp_path / "ucf")
    out = tmp_path / "m" / "ucf.manifest.tsv"
    res = _run("build", tmp_path / "ucf", "--out", out)
    assert res.exit_code == 0, res.output
    assert Manifest.read(out) == build_manifest(tmp_path / "ucf")
    assert "dataset:  ucf101" in res.output and "classes:  3" in res.output and "videos:   36" in res.output
    assert "split 1:  train 24 (val 6) test 12" in res.output
    assert "problems: none" in res.output and f"wrote {out}" in res.output


def test_build_default_output_name(tmp_path, monkeypatch):
    make_fake_ucf101(tmp_path / "UCF101")
    monkeypatch.chdir(tmp_path)
    res = _run("build", "UCF101")
    assert res.exit_code == 0, res.output
    assert len(Manifest.read(tmp_path / "UCF101.manifest.tsv")) == 36


def test_build_errors_are_click_errors(tmp_path):
    make_fake_ucf101(tmp_path, missing=(f"YoYo/{ucf_name('YoYo', 1, 1)}",))
    res = _run("build", tmp_path, "--out", tmp_path / "m.tsv")
    assert res.exit_code == 1
    assert "Error: 1 of 36 videos named in the split files" in res.output and "--allow-missing" in res.output
    assert not (tmp_path / "m.tsv").exists()
    res = _run("build", tmp_path, "--allow-missing", "--out", tmp_path / "m.tsv")
    assert res.exit_code == 0 and "problems: 1" in res.output and "videos:   35" in res.output
    res = _run("build", tmp_path, "--dataset", "hmdb51")
    assert res.exit_code == 1 and "no HMDB51 split files" in res.output


def test_misuse_is_a_usage_error(tmp_path):
    assert _run("build", tmp_path / "absent").exit_code == 2
    assert _run("build", tmp_path, "--dataset", "kinetics").exit_code == 2
    res = _run("synth", "--out", tmp_path / "s", "--size", "big")
    assert res.exit_code == 2 and "WIDTHxHEIGHT" in res.output
    assert _run("synth", "--out", tmp_path / "s", "--classes", "1").exit_code == 2


def test_check_exit_status(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_fake_ucf101(tmp_path / "clean")
    res = _run("check", tmp_path / "clean")
    assert res.exit_code == 0 and "check passed" in res.output
    make_fake_ucf101(tmp_path / "dirty", unlisted=("YoYo/v_YoYo_g07_c01.avi",),
                     missing=(f"YoYo/{ucf_name('YoYo', 1, 1)}",))
    res = _run("check", tmp_path / "dirty")
    assert res.exit_code == 1
    assert "problems: 2" in res.output and "v_YoYo_g07_c01.avi" in res.output and "check failed" in res.output
    assert not list(tmp_path.glob("*.tsv"))  # check never writes a manifest
    (tmp_path / "clean" / "UCF-101" / "YoYo" / "README.txt").write_text("notes")
    res = _run("check", tmp_path / "clean")  # reported, not a problem
    assert res.exit_code == 0
    assert "skipped:  1 files in class folders that are not videos by their extension (.txt 1)" in res.output


def test_synth_then_info(tmp_path):
    res = _run("synth", "--out", tmp_path / "s", "--classes", "3", "--videos-per-class", "3", "--frames", "3",
               "--size", "48x32", "--seed", "2")
    assert res.exit_code == 0, res.output
    assert "dataset:  ucf101" in res.output and "videos:   9" in res.output
    m = build_manifest(tmp_path / "s")
    m.write(tmp_path / "s.tsv")
    res = _run("info", tmp_path / "s.tsv")
    assert res.exit_code == 0 and "split 3:  train 6 (val 3) test 3" in res.output
    (tmp_path / "bad.tsv").write_text("hello\n")
    res = _run("info", tmp_path / "bad.tsv")
    assert res.exit_code == 1 and "bad.tsv:1: not a manifest" in res.output


def test_module_entry_point_and_light_import():
    code = ("import sys, data_manifest; "
            "print(sorted(m for m in ('cv2', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=60)
    assert res.stdout.strip() == "[]", res.stderr
    res = subprocess.run([sys.executable, "-m", "data_manifest", "--help"], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=60)
    assert res.returncode == 0 and "synth" in res.stdout and "check" in res.stdout


@pytest.mark.parametrize("command", ["synth", "build", "check", "info"])
def test_help(command):
    res = _run(command, "--help")
    assert res.exit_code == 0 and "Usage:" in res.output
