"""Every study's quick mode end to end, as a user runs it: `python -m experiments.studies.<name>
--quick`, which trains the study's sweep for a few steps of a tiny model and writes its page and
figure, marked as smoke-test output.

Each study runs in its own process (so that its quick mode can compile without LLVM's
optimisations, which it sets before JAX starts: see experiments.studies.driver) on one CPU
device, and reads small copies of the built-in datasets generated here (the generators' split
sizes patched down): a quick mode scores 8 images, so generating 2,000-image splits would be
most of its time. One class per study, so that the two CI workers (`--dist loadscope`) share
the studies out.

A quick mode's time is XLA compiles, about 10 s per distinct program on the 2-core CPU even at
its tiny size, and every arm trains its own programs: measured alone, `tversky` (5 arms) takes
81 s and `imbalance` (18 arms) 204 s, the seven together well over ten minutes. CI (25 minutes
for everything) runs `decisions`' (two trainings, each scored under four decision rules), which
goes through the whole path every study shares (driver, runner, scoring of checkpoints, report);
the others are marked `slow`: `python -m pytest -m slow tests/test_studies_quick.py`.
"""

import subprocess
import sys

import pytest

from run_helpers import child_env

from experiments.studies import report

SMALL_SPLITS = {"NUM_TRAIN": 64, "NUM_VALIDATION": 16}  # 64: enough for class-count weights


def small_data_dir(tmp_path, monkeypatch, *names) -> str:
    """A tfds data_dir holding the named built-in datasets, each with small splits."""
    import importlib

    data_dir = str(tmp_path / "data")
    loaders = {"shapes": "load_shapes", "shapes_rare": "load_scenes", "digits": "load_scenes"}
    for name in names:
        module = importlib.import_module(f"seg_jax.data.{name}")
        for constant, value in SMALL_SPLITS.items():
            monkeypatch.setattr(module, constant, value)
        getattr(module, loaders[name])("train", data_dir=data_dir)
    return data_dir


def run_quick(name, tmp_path, data_dir) -> str:
    out, workdir = tmp_path / "out", tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", f"experiments.studies.{name}", "--quick", f"--out={out}",
         f"--workdir={workdir}", f"--data_dir={data_dir}"],
        env=child_env(1), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    page = (out / f"{name}.md").read_text()
    assert report.SMOKE_LINE in page
    assert (out / f"{name}.png").stat().st_size > 10_000
    runs = report.load_runs(str(workdir))
    assert runs and all(r.status == "done" for r in runs)
    return page


@pytest.mark.slow
class TestImbalance:
    def test_quick(self, tmp_path, monkeypatch):
        data_dir = small_data_dir(tmp_path, monkeypatch, "shapes", "shapes_rare")
        page = run_quick("imbalance", tmp_path, data_dir)
        assert "| shapes_rare: tversky (alpha=0.3, beta=0.7) |" in page


@pytest.mark.slow
class TestTversky:
    def test_quick(self, tmp_path, monkeypatch):
        page = run_quick("tversky", tmp_path, small_data_dir(tmp_path, monkeypatch, "shapes"))
        assert "## Verdict" in page


class TestDecisions:
    def test_quick(self, tmp_path, monkeypatch):
        page = run_quick("decisions", tmp_path, small_data_dir(tmp_path, monkeypatch, "shapes"))
        assert "Bayes" in page


@pytest.mark.slow
class TestPanoptic:
    def test_quick(self, tmp_path, monkeypatch):
        run_quick("panoptic", tmp_path, small_data_dir(tmp_path, monkeypatch, "shapes"))


@pytest.mark.slow
class TestBoundary:
    def test_quick(self, tmp_path, monkeypatch):
        run_quick("boundary", tmp_path, small_data_dir(tmp_path, monkeypatch, "shapes"))


@pytest.mark.slow
class TestGridding:
    def test_quick(self, tmp_path, monkeypatch):
        run_quick("gridding", tmp_path,
                  small_data_dir(tmp_path, monkeypatch, "shapes", "digits"))


@pytest.mark.slow
class TestAspp:
    def test_quick(self, tmp_path, monkeypatch):
        run_quick("aspp", tmp_path, small_data_dir(tmp_path, monkeypatch, "shapes"))
