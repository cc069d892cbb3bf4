"""A user's mistake ends the command line as one `FATAL <message>` line with exit status 2 and no
traceback (`--verbose` or SEG_JAX_DEBUG=1 shows it); a program error keeps its traceback."""

import os
import subprocess
import sys

from PIL import Image
from run_helpers import child_env

from seg_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--config=configs/shapes.py:quick"


def _start(*args, env_extra=None):
    return subprocess.Popen(
        [sys.executable, "-m", "seg_jax.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=child_env(1, **(env_extra or {})))


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _fatal_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("FATAL ")]


def test_user_mistakes_are_one_fatal_line_and_program_errors_keep_their_traceback(tmp_path):
    empty_images = tmp_path / "data"
    (empty_images / "images").mkdir(parents=True)
    (empty_images / "masks").mkdir()
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (32, 32)).save(pictures / "one.png")
    broken = tmp_path / "broken_module.py"
    broken.write_text("raise RuntimeError('a bug in the extra module')\n")
    runs = {  # all at once: each is mostly JAX's import
        "model": _start(QUICK, f"--workdir={tmp_path / 'w1'}", "--config.model.name=deeplabv4"),
        "folder": _start("--config=configs/folder.py", f"--workdir={tmp_path / 'w2'}",
                         f"--config.data.root={empty_images}", "--config.data.num_classes=2"),
        "cost": _start(QUICK, f"--workdir={tmp_path / 'w3'}",
                       "--config.decision.cost=((0, 1), (1, 0))"),
        "predict": _start(QUICK, f"--workdir={tmp_path / 'w4'}", "--mode=predict",
                          f"--predict.input={pictures}"),
        "verbose": _start(QUICK, f"--workdir={tmp_path / 'w5'}", "--config.model.name=deeplabv4",
                          "--verbose"),
        "debug_env": _start(QUICK, f"--workdir={tmp_path / 'w6'}",
                            "--config.model.name=deeplabv4", env_extra={"SEG_JAX_DEBUG": "1"}),
        "bug": _start(QUICK, f"--workdir={tmp_path / 'w7'}",
                      f"--config.extra_modules=('{broken}',)"),
    }
    done = {name: _finish(proc) for name, proc in runs.items()}
    expected = {  # what the one line must name
        "model": ["config.model.name='deeplabv4'", "valid names"],
        "folder": ["holds no .png or .jpg images", str(empty_images / "images")],
        "cost": ["decision.cost", "(2, 2)"],
        "predict": ["No checkpoint in", "train first"],
    }
    for name, needles in expected.items():
        code, stderr = done[name]
        assert code == errors.USER_ERROR_EXIT_CODE, (name, code, stderr[-3000:])
        assert "Traceback" not in stderr, (name, stderr[-3000:])
        fatal = _fatal_lines(stderr)
        assert len(fatal) == 1, (name, stderr[-3000:])
        for needle in needles:
            assert needle in fatal[0], (name, needle, fatal[0])
    for name in ("verbose", "debug_env"):  # the same mistake, with where it was raised
        code, stderr = done[name]
        assert code != 0 and "Traceback" in stderr, (name, stderr[-3000:])
        assert "ConfigError" in stderr and "deeplabv4" in stderr, (name, stderr[-3000:])
        assert not _fatal_lines(stderr), name
    code, stderr = done["bug"]
    assert code == 1 and "Traceback" in stderr and "a bug in the extra module" in stderr, stderr
    assert not _fatal_lines(stderr)
