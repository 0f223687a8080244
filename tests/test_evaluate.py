"""fast3r-jax evaluate (evaluate.py) end to end with the built-in model: every dataset path on tiny fixtures in the dataset's layout, the
written reports, and the errors for missing or malformed inputs."""

import csv
import functools
import json
import math

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fast3r_jax import load_pretrained
from fast3r_jax.cli import main
from fast3r_jax.data import eval_datasets as ed
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.evaluation import protocols
from fast3r_jax.evaluation.datasets import DATASETS
from fast3r_jax.evaluation.protocols import HEADS, POSE_METRICS, RECON_METRICS, evaluate_scenes, model_predictor
from fast3r_jax.inference import engine as inference
from fast3r_jax.model.params import init_params
from fast3r_jax.reconstruct import DEFAULT_CHECKPOINT
from tests.helpers.eval_fixtures import (
    NRGBD_K,
    SEVEN_K,
    oracle,
    write_co3d,
    write_dtu,
    write_nrgbd,
    write_re10k,
    write_seven_scenes,
)

SMALL = ["--resolution", "32x16"]  # multiples of the patch size, quick to compile
# per dataset: fixture writer and the options that make the benchmark's settings fit the fixture's few frames
FIXTURES = {
    "co3d": (write_co3d, ["--views", "3", "--scenes", "2"]),
    "re10k": (write_re10k, ["--views", "3", "--sequences", "{data}/test_list.txt"]),
    "7scenes": (write_seven_scenes, ["--kf-every", "3"]),
    "nrgbd": (write_nrgbd, ["--views", "3"]),
    "dtu": (write_dtu, ["--kf-every", "2"]),
}


@pytest.fixture
def fixture_intrinsics(monkeypatch):
    """7-Scenes and NRGBD have fixed intrinsics; the fixtures' small frames use their own."""
    for reader, K in ((ed.SevenScenes, SEVEN_K), (ed.NRGBD, NRGBD_K)):
        monkeypatch.setattr(reader, "__init__", functools.partialmethod(reader.__init__, intrinsics=K))


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_reports(out, dataset: str, num_runs: int) -> dict:
    """JSON, CSV, Markdown, TensorBoard and PNG outputs of a run hold finite metrics in range; returns the JSON."""
    report = json.loads((out / "metrics.json").read_text())
    tasks = DATASETS[dataset].tasks
    assert report["dataset"] == dataset and set(report["tables"]) == set(tasks)
    expected_rows = {"pose": num_runs, "recon": num_runs * len(HEADS)}
    scalars = EventAccumulator(str(out / "tb"))
    scalars.Reload()
    for task in tasks:
        rows = report["tables"][task]
        keys = POSE_METRICS if task == "pose" else RECON_METRICS
        assert len(rows) == expected_rows[task] and all(set(keys) <= set(row) for row in rows)
        for row in rows:
            assert row["samples"] >= 1
            step = row["views"] if isinstance(row["views"], int) else 0
            prefix = f"{dataset}/{task}" + (f"_{row['head']}" if task == "recon" else "")
            for key in keys:
                upper = 1.0 if task == "pose" or key.startswith("nc") else math.inf
                assert math.isfinite(row[key]) and 0.0 <= row[key] <= upper, (task, key, row[key])
                logged = {event.step: event.value for event in scalars.Scalars(f"{prefix}/{key}")}
                assert logged[step] == pytest.approx(row[key], rel=1e-6)
        with open(out / f"{task}.csv") as f:
            assert len(list(csv.DictReader(f))) == len(rows)
        assert f"## {dataset} {task}" in (out / "metrics.md").read_text()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == num_runs * (2 * ("pose" in tasks) + ("recon" in tasks))
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 100
    runs = [row for row in report["tables"][tasks[0]] if row.get("head", HEADS[0]) == HEADS[0]]
    assert len(report["samples"]) == sum(row["samples"] for row in runs)
    return report


def test_default_synthetic_run(tmp_path, capsys):
    code, out, _ = run(["--scenes", "2", "--views", "2", "3", *SMALL, "--out", str(tmp_path / "o")], capsys)
    assert code == 0
    assert "built-in model" in out and "synthetic pose" in out and "synthetic recon" in out and "local_aligned" in out
    report = check_reports(tmp_path / "o", "synthetic", num_runs=2)
    assert [row["views"] for row in report["tables"]["pose"]] == [2, 3]
    assert report["pose_solver"] == "procrustes" and report["resolution"] == [32, 16]


@pytest.mark.parametrize("dataset", list(FIXTURES))
def test_dataset_paths(dataset, tmp_path, capsys, fixture_intrinsics):
    write, options = FIXTURES[dataset]
    write(tmp_path / "data")
    if dataset == "re10k":
        (tmp_path / "data" / "test_list.txt").write_text("01cd\n")
    argv = ["--dataset", dataset, "--data-root", str(tmp_path / "data"), *SMALL,
            *[o.format(data=tmp_path / "data") for o in options], "--out", str(tmp_path / "o")]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    report = check_reports(tmp_path / "o", dataset, num_runs=1)
    assert report["pose_solver"] == ("pnp" if dataset in ("co3d", "re10k") else None)
    names = {"7scenes": ["chess/seq-01", "chess/seq-02"], "re10k": ["01cd"], "dtu": ["scan1"]}
    if dataset in names:
        assert [s["name"] for s in report["samples"]] == names[dataset]
    if dataset == "7scenes":
        assert report["tables"]["recon"][0]["views"] == "1 in 3"


@pytest.mark.parametrize("dataset", ["synthetic", "co3d"])
def test_ground_truth_pointmaps_give_perfect_tables(dataset, tmp_path, capsys, monkeypatch):
    """The model replaced by the ground truth: every pose within 5 degrees, zero reconstruction error. (CO3D: the
    fixture's first sample, whose three frames differ; a repeated frame has no baseline, see test_evaluation.)"""
    monkeypatch.setattr(protocols, "model_predictor", lambda *args: oracle)
    argv = ["--dataset", dataset, "--views", "3", "--scenes", "1" if dataset == "co3d" else "3", *SMALL,
            "--out", str(tmp_path / "o")]
    if dataset == "co3d":
        write_co3d(tmp_path / "data")
        argv += ["--data-root", str(tmp_path / "data")]
    assert run(argv, capsys)[0] == 0
    tables = json.loads((tmp_path / "o" / "metrics.json").read_text())["tables"]
    assert {k: tables["pose"][0][k] for k in POSE_METRICS} == dict.fromkeys(POSE_METRICS, 1.0)
    for row in tables.get("recon", []):
        assert row["acc"] < 1e-4 and row["comp_med"] < 1e-4 and row["nc2"] > 0.999


def test_builtin_model_beats_an_untrained_one():
    config, params = load_pretrained(DEFAULT_CHECKPOINT)
    scenes = SyntheticScenes(2, 3, (128, 96), split="test")
    trained = evaluate_scenes(config, params, scenes)
    untrained = evaluate_scenes(config, init_params(config, 0), scenes)
    assert trained["scenes"] == 2
    for head in HEADS:
        assert trained[f"{head}/comp"] < 0.7 * untrained[f"{head}/comp"]
    assert trained["rot_err_deg_median"] < untrained["rot_err_deg_median"]


def test_scenes_reuse_the_compiled_model(monkeypatch):
    config, params = load_pretrained(DEFAULT_CHECKPOINT)
    predict = model_predictor(config, params)
    scenes = SyntheticScenes(3, 2, (32, 16), split="test")
    built = []
    program = inference.Engine._program  # pylint: disable=protected-access
    monkeypatch.setattr(inference.Engine, "_program",
                        lambda self, fn, *args: built.append(fn) or program(self, fn, *args))
    predict(scenes[0], 0)
    assert len(built) == 3  # encoder, fusion, heads
    predict(scenes[1], 1)
    predict(scenes[2], 2)
    assert len(built) == 3


# ----------------------------------------------------------------------------
# Errors: exit code 2, one line on stderr naming the culprit.
# ----------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = run(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "config.json" in err and "Traceback" not in err


def test_missing_data_root_folder(tmp_path, capsys):
    code, _, err = run(["--dataset", "7scenes", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path)],
                       capsys)
    assert code == 2 and err.startswith("fast3r-jax: error: 7-Scenes root folder not found") and str(tmp_path / "nowhere") in err
    assert err.count("\n") == 1


def test_data_root_required(capsys):
    code = main(["evaluate", "--dataset", "dtu"])
    assert code == 2 and "--data-root is required for --dataset dtu" in capsys.readouterr().err


def test_missing_and_malformed_files(tmp_path, capsys, fixture_intrinsics):
    write_seven_scenes(tmp_path / "data")
    argv = ["--dataset", "7scenes", "--data-root", str(tmp_path / "data"), *SMALL, "--kf-every", "3",
            "--out", str(tmp_path / "o")]
    pose = tmp_path / "data" / "chess" / "seq-01" / "frame-000003.pose.txt"
    pose.write_text("1 0 0 0\n0 1 0 0\n0 0 1 x\n0 0 0 1\n")
    code, _, err = run(argv, capsys)
    assert code == 2 and "malformed 7-Scenes pose file" in err and str(pose) in err
    depth = tmp_path / "data" / "chess" / "seq-01" / "frame-000000.depth.proj.png"
    depth.unlink()
    code, _, err = run(argv, capsys)
    assert code == 2 and "depth map not found" in err and str(depth) in err
    assert not (tmp_path / "o").exists()


def test_malformed_sequence_list(tmp_path, capsys):
    write_co3d(tmp_path)
    (tmp_path / "selected_seqs_test.json").write_text("{not json")
    code, _, err = run(["--dataset", "co3d", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "malformed CO3D sequence list" in err and "selected_seqs_test.json" in err
