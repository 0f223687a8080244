"""evaluate.py on the built-in model and held-out synthetic scenes."""

import json

import numpy as np

import evaluate
from fast3r_jax import load_pretrained
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.evaluation import evaluate_scenes, point_error
from fast3r_jax.params import init_params


def test_default_run_prints_and_writes_the_table(tmp_path, capsys):
    assert evaluate.main(["--scenes", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "built-in model" in out and "RRA@15" in out and "mAA(30)" in out
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["scenes"] == 2 and 0.0 <= result["RRA@15"] <= 1.0
    assert (tmp_path / "metrics.csv").read_text().startswith("metric,value")
    assert (tmp_path / "metrics.md").read_text().startswith("| metric | value |")


def test_builtin_model_beats_an_untrained_one():
    config, params = load_pretrained(evaluate.BUILTIN)
    scenes = SyntheticScenes(3, 4, (128, 96), split="test")
    trained = evaluate_scenes(config, params, scenes)
    untrained = evaluate_scenes(config, init_params(config, 0), scenes)
    assert trained["point_err_rel_mean"] < 0.7 * untrained["point_err_rel_mean"]
    assert trained["rot_err_deg_median"] < untrained["rot_err_deg_median"]


def test_point_error_is_zero_for_a_similar_copy():
    gt = np.random.default_rng(0).normal(size=(2, 4, 5, 3))
    pred = 3.0 * gt + 1.5  # a similarity of the truth
    assert point_error(pred.astype(np.float32), np.ones((2, 4, 5), np.float32), gt) < 1e-5


def test_missing_checkpoint_is_reported(tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
