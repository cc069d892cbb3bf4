"""Faults of the input: processes preparing the built-in dataset in one data_dir at once, and an
example that cannot be read mid-run (its worker's error names it; nothing waits for the batch)."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import ml_collections
import numpy as np
import pytest

from seg_jax import errors
from seg_jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_processes_preparing_one_data_dir_generate_it_once_and_all_read_it_whole(tmp_path):
    start_at = time.time() + 8  # after every process has imported tfds: they start together
    script = textwrap.dedent(f"""
        import time
        from absl import logging
        from seg_jax.data import shapes
        logging.set_verbosity(logging.INFO)
        shapes.NUM_TRAIN, shapes.NUM_VALIDATION = 40, 4
        time.sleep(max(0.0, {start_at} - time.time()))
        source = shapes.load_shapes("train", data_dir={str(tmp_path)!r})
        print("examples", len(source), int(sum(int(source[i]["semantic"].sum())
                                                  for i in range(len(source)))))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    counts = {out.split()[-2:][0] for out, _ in outs}
    sums = {out.split()[-1] for out, _ in outs}
    assert counts == {"40"} and len(sums) == 1  # every process read the same 40 examples
    generated = sum(err.count("Generating the shapes dataset") for _, err in outs)
    waited = sum(err.count("Another process is generating the shapes dataset") for _, err in outs)
    assert generated == 1, [err[-2000:] for _, err in outs]
    assert waited >= 1  # they did overlap: the test exercised the lock


class _SourceWithABadRecord:
    """Eight 16x16 examples; reading example `bad` fails as a truncated file would."""

    def __init__(self, bad: int):
        self.bad = bad

    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == self.bad:
            raise OSError("unexpected end of file in record 5 of shapes-train.array_record-00000")
        time.sleep(0.05)  # a real read takes time: the other workers are mid-batch
        return {"image": np.zeros((16, 16, 3), np.uint8), "label": np.zeros((16, 16), np.uint8)}


def test_an_example_that_cannot_be_read_is_named_and_the_stream_stops():
    config = ml_collections.ConfigDict(dict(
        crop_size=16, min_scale=1.0, max_scale=1.0, hflip=False, ignore_label=255,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_workers=3, prefetch=4))
    loader = pipeline.TrainLoader(_SourceWithABadRecord(bad=5), config, global_batch_size=2,
                                  seed=0, num_classes=2)
    bad_step = next(s for s in range(8) if 5 in (loader.example_index(s, 0),
                                                  loader.example_index(s, 1)))
    seen, raised = [], []

    def consume():
        try:
            for batch in loader.iterate(0, 40):
                seen.append(batch)
        except Exception as error:  # the consumer's side: what the train loop sees
            raised.append(error)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the stream hung waiting for a batch"
    assert len(seen) == bad_step  # every batch before the bad one, in order, then the error
    assert len(raised) == 1 and isinstance(raised[0], errors.DataError)
    message = str(raised[0])
    assert "training example 5" in message and "shapes-train.array_record-00000" in message
    assert "OSError" in message


def test_a_label_out_of_range_is_a_data_error():
    loader_source = [{"image": np.zeros((8, 8, 3), np.uint8), "label": np.full((8, 8), 7, np.uint8)}]
    config = ml_collections.ConfigDict(dict(
        crop_size=8, min_scale=1.0, max_scale=1.0, hflip=False, ignore_label=255,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_workers=1, prefetch=1))
    loader = pipeline.TrainLoader(loader_source, config, global_batch_size=1, seed=0,
                                  num_classes=2)
    with pytest.raises(errors.DataError, match=r"training example 0: label ids \[7\]"):
        loader.batch(0)


def test_a_truncated_array_record_file_is_named(tmp_path, monkeypatch):
    from seg_jax.data import shapes

    monkeypatch.setattr(shapes, "NUM_TRAIN", 40)
    monkeypatch.setattr(shapes, "NUM_VALIDATION", 4)
    shapes.load_shapes("train", data_dir=str(tmp_path))
    (path,) = [os.path.join(d, n) for d, _, names in os.walk(tmp_path) for n in names
               if "train.array_record" in n]
    with open(path, "r+b") as f:  # a copy cut short
        f.truncate(os.path.getsize(path) // 2)
    source = shapes.load_shapes("train", data_dir=str(tmp_path))
    with pytest.raises(errors.DataError) as raised:
        for index in range(len(source)):
            pipeline.read_example(source, index, f"training example {index}")
    assert f"(in {path})" in str(raised.value) and "could not be read" in str(raised.value)
