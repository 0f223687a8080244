"""Several processes, one job (jax.distributed on localhost, gloo collectives): training, checkpoints and sharded
inference give the numbers of a single process."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from fast3r_jax import distributed
from tests.helpers.multiprocess import launch

ROOT = pathlib.Path(__file__).parents[1]
TRAIN = [str(ROOT / "train.py"), "--set", "data.batch_size=4", "--set", "val_batches=0", "--set", "log_every=1",
         "--set", "data.train=\"64 @ synthetic(num_scenes=64, num_views=2, resolution=(32, 32), split='train')\"",
         "--set", "data.resolutions=((32, 32),)", "--set", "dtype='float32'", "--set", "ckpt_every=2"]


def _late(program: str) -> list[str]:
    """The start of an argv that has process 1 end its compilation of `program` 40 s after process 0, as on a loaded
    machine: gloo's set-up of the first collective over a group of devices waits 30 s for every process
    (fast3r_jax.distributed.barrier)."""
    return [str(ROOT / "tests" / "helpers" / "late_compile.py"), program, "40"]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]
    return out


def test_two_processes_train_as_one_and_resume_in_one(tmp_path):
    """2 processes x 2 devices train 4 steps, process 1 done compiling the step 40 s after process 0: steps 1-2 have
    the losses of a fresh 1-process x 4-device run (the same mesh); 1 process x 4 devices resumes their step-2
    checkpoint and logs only steps 3 and 4, with the losses of the 2 processes (same state, same global batches)."""
    two = tmp_path / "two"
    outputs = launch([*_late("jit(step)"), *TRAIN, "--set", "steps=4", "--set", "keep=2", "--set",
                      f"workdir={two}"], processes=2, devices=2)
    assert "run written to" in outputs[0] and "run written to" not in outputs[1]  # process 0 reports and logs
    assert sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    assert len(list((two / "tb").iterdir())) == 1
    expected = _losses(two)
    assert sorted(expected) == [1, 2, 3, 4]

    fresh = tmp_path / "fresh"
    launch([*TRAIN, "--set", "steps=2", "--set", f"workdir={fresh}"], processes=1, devices=4)
    first = _losses(fresh)
    assert sorted(first) == [1, 2]
    for step in (1, 2):
        assert first[step] == pytest.approx(expected[step], rel=1e-5), step

    resumed_dir = tmp_path / "resumed"  # the 2-process run's config and step-2 checkpoint, none of its logs
    resumed_dir.mkdir()
    shutil.copy(two / "config.json", resumed_dir / "config.json")
    shutil.copytree(two / "checkpoints" / "2", resumed_dir / "checkpoints" / "2")
    launch([*TRAIN, "--set", "steps=4", "--set", "keep=2", "--set", f"workdir={resumed_dir}"], processes=1, devices=4)
    resumed = _losses(resumed_dir)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step


def test_explicit_flags_must_come_together():
    with pytest.raises(ValueError, match="--num-processes, --process-id"):
        distributed.initialize(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match=r"--process-id must be in \[0, 2\)"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    assert distributed.initialize() is False  # nothing asked for, no multi-task launcher: single process


def _cameras(folder: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    views = json.loads((folder / "cameras.json").read_text())["cameras"]
    return (np.asarray([v["c2w"] for v in views], np.float64),
            np.asarray([v["intrinsics"] for v in views], np.float64))


def test_two_processes_reconstruct_as_one(tmp_path):
    """`fast3r-jax reconstruct` as 2 processes x 2 devices (sharded engine over the global mesh), process 1 done
    compiling the fusion 40 s after process 0, writes the cameras and points of a one-device run; only process 0
    writes and reports."""
    common = ["-m", "fast3r_jax.cli", "reconstruct", str(ROOT / "examples" / "synthetic_room"), "--dtype", "float32",
              "--pose-solver", "procrustes"]
    launch([*common, "--out", str(tmp_path / "one")], processes=1, devices=1)
    outputs = launch([*_late("jit(_fuse)"), *common, "--out", str(tmp_path / "two")], processes=2, devices=2)
    assert "reconstructed 8 views" in outputs[0] and "reconstructed" not in outputs[1]
    (c2w_one, k_one), (c2w_two, k_two) = _cameras(tmp_path / "one"), _cameras(tmp_path / "two")
    np.testing.assert_allclose(c2w_two, c2w_one, atol=1e-4)
    np.testing.assert_allclose(k_two, k_one, rtol=1e-4)
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert two["points"] == pytest.approx(one["points"], rel=1e-3)


def test_two_processes_evaluate_as_one(tmp_path):
    """evaluate.py as 2 processes x 2 devices reports the scores of a one-device run; only process 0 writes."""
    common = [str(ROOT / "evaluate.py"), "--scenes", "2", "--views", "3"]
    launch([*common, "--out", str(tmp_path / "one")], processes=1, devices=1)
    outputs = launch([*common, "--out", str(tmp_path / "two")], processes=2, devices=2)
    assert "synthetic pose" in outputs[0] and "synthetic pose" not in outputs[1]
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text())["tables"] for d in ("one", "two"))
    assert one.keys() == two.keys() == {"pose", "recon"}
    for task in one:
        for row_one, row_two in zip(one[task], two[task], strict=True):
            for key, value in row_one.items():
                assert row_two[key] == (pytest.approx(value, rel=1e-3, abs=1e-4) if isinstance(value, float)
                                        else value), (task, key)
