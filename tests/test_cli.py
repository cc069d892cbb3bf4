"""The runner's command line: flag and config errors are one clear line, before JAX starts."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "seg_jax.main", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )


def test_unknown_config_key_names_the_key_and_a_suggestion(tmp_path):
    proc = _run("--config=configs/shapes.py:quick", f"--workdir={tmp_path}",
                "--config.optimizer.learning_rat=0.1")
    assert proc.returncode != 0
    assert "learning_rat" in proc.stderr and 'Did you mean "learning_rate"' in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.listdir(tmp_path)  # nothing was started


def test_unknown_variant_is_named(tmp_path):
    proc = _run("--config=configs/shapes.py:quik", f"--workdir={tmp_path}")
    assert proc.returncode != 0
    assert "quik" in proc.stderr and "quick" in proc.stderr


@pytest.mark.parametrize("missing", ["--config", "--workdir"])
def test_required_flags(tmp_path, missing):
    args = {"--config": "--config=configs/shapes.py", "--workdir": f"--workdir={tmp_path}"}
    del args[missing]
    proc = _run(*args.values())
    assert proc.returncode != 0
    assert missing.lstrip("-") in proc.stderr


def test_predict_mode_needs_an_input(tmp_path):
    proc = _run("--config=configs/shapes.py:quick", f"--workdir={tmp_path}", "--mode=predict")
    assert proc.returncode != 0
    assert "--predict.input" in proc.stderr and "Traceback" not in proc.stderr
