"""Several processes, one job (jax.distributed on localhost, gloo collectives): training and checkpoints give the
numbers of a single process with the same devices."""

import json
import pathlib

import pytest

from fast3r_jax import distributed
from multiprocess import launch

ROOT = pathlib.Path(__file__).parents[1]
TRAIN = [str(ROOT / "train.py"), "--set", "data.batch_size=4", "--set", "val_batches=0", "--set", "log_every=1",
         "--set", "data.train=\"64 @ synthetic(num_scenes=64, num_views=2, resolution=(32, 32), split='train')\"",
         "--set", "data.resolutions=((32, 32),)", "--set", "dtype='float32'", "--set", "ckpt_every=2"]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]
    return out


def test_two_processes_train_as_one_and_resume_in_one(tmp_path):
    """2 processes x 2 devices train 2 steps; 1 process x 4 devices resumes their checkpoint for 2 more; every loss
    equals an uninterrupted 4-step run of 1 process x 4 devices (same mesh, same global batches)."""
    reference, shared = tmp_path / "one", tmp_path / "shared"
    launch([*TRAIN, "--set", "steps=4", "--set", f"workdir={reference}"], processes=1, devices=4)
    outputs = launch([*TRAIN, "--set", "steps=2", "--set", f"workdir={shared}"], processes=2, devices=2)
    assert "run written to" in outputs[0] and "run written to" not in outputs[1]  # process 0 reports and logs
    assert sorted(int(p.name) for p in (shared / "checkpoints").iterdir() if p.name.isdigit()) == [2]
    launch([*TRAIN, "--set", "steps=4", "--set", f"workdir={shared}"], processes=1, devices=4)

    expected, got = _losses(reference), _losses(shared)
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step
    assert len(list((shared / "tb").iterdir())) >= 1


def test_explicit_flags_must_come_together():
    with pytest.raises(ValueError, match="--num-processes, --process-id"):
        distributed.initialize(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match=r"--process-id must be in \[0, 2\)"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    assert distributed.initialize() is False  # nothing asked for, no multi-task launcher: single process
