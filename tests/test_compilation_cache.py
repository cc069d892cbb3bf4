"""The runner's persistent compilation cache: config.compilation_cache_dir is filled by a run
(so a repeated or resumed run loads its programs), unless JAX_COMPILATION_CACHE_DIR chose one."""

import os
import subprocess
import sys

from run_helpers import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(workdir, data_dir, cache, env):
    return subprocess.Popen(
        [sys.executable, "-m", "seg_jax.main", "--config=configs/shapes.py:quick",
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
         "--config.num_train_steps=2", "--config.checkpoint_every_steps=2",
         f"--config.compilation_cache_dir={cache}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _files(folder):
    return [n for _, _, names in os.walk(folder) for n in names] if os.path.isdir(folder) else []


def test_a_run_fills_the_configured_cache_unless_the_environment_names_another(
        shapes_data_dir, tmp_path):
    plain = child_env(1)
    plain.pop("JAX_COMPILATION_CACHE_DIR", None)  # the test session's own cache
    chosen = dict(plain, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "chosen"))
    runs = [_start(tmp_path / "a", shapes_data_dir, tmp_path / "configured", plain),
            _start(tmp_path / "b", shapes_data_dir, tmp_path / "ignored", chosen)]
    for proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert _files(tmp_path / "configured")  # compiled programs were written where configured
    assert _files(tmp_path / "chosen") and not _files(tmp_path / "ignored")
