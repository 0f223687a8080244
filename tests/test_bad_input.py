"""Bad input to every command: exit status 2, one line `fast3r-jax: error: ...` naming the culprit (file, folder or
field), and no file outside the command's own output touched. In-process `fast3r_jax.cli.main` calls on tiny
inputs."""

import errno
import io
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import save_file
from test_eval_datasets import write_co3d

from fast3r_jax import config as config_lib
from fast3r_jax.checkpoint import CheckpointError, load_pretrained, save_pretrained
from fast3r_jax.cli import main
from fast3r_jax.model.params import abstract_params
from tests.helpers.reference_weights import tiny_state_dict
from tests.helpers.upstream_configs import TINY

ROOT = pathlib.Path(__file__).parents[1]
TRAIN_TINY = config_lib.load_config_file(ROOT / "configs" / "train_tiny.py")


def tree(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def assert_error(code: int, err: str, *culprits: str) -> None:
    assert code == 2, err
    assert err.startswith("fast3r-jax: error: ") and err.count("\n") == 1, err
    for culprit in culprits:
        assert culprit in err, (culprit, err)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    """A checkpoint of the default training config's model (zero weights: nothing to compile)."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_params(TRAIN_TINY.model))
    save_pretrained(folder, TRAIN_TINY.model, zeros)
    return folder


# ----------------------------------------------------------------------------
# Configs: upstream config.json, our checkpoint config.json, training configs, --set.
# ----------------------------------------------------------------------------


def _upstream(section=None, key=None, value=None):
    d = json.loads(json.dumps(TINY))
    if key is None:
        d[section] = value
    else:
        d[section][key] = value
    return d


@pytest.mark.parametrize("data,culprit", [
    (_upstream("decoder_args", "random_image_idx_embedding", "false"), "decoder_args.random_image_idx_embedding"),
    (_upstream("encoder_args", "embed_dim", 96.9), "encoder_args.embed_dim"),
    (_upstream("encoder_args", None, 5), "encoder_args"),
    (_upstream("encoder_args", "num_heads", [3]), "encoder_args.num_heads"),
    ([TINY], "top level"),
])
def test_upstream_config_of_wrong_types(tmp_path, capsys, data, culprit):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps(data))
    before = tree(tmp_path)
    code, err = run(["convert", str(snapshot), str(tmp_path / "out")], capsys)
    assert_error(code, err, str(snapshot / "config.json"), culprit)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("edit,culprit", [
    ({"remat": "yes"}, "remat"),
    ({"fusion": {"random_image_ids": "no"}}, "fusion.random_image_ids"),
    ({"encoder": {"embed_dim": 96.9}}, "encoder.embed_dim"),
    ({"bogus": 1}, "bogus"),
])
def test_checkpoint_config_of_wrong_types(tmp_path, capsys, checkpoint, edit, culprit):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    saved = json.loads((folder / "config.json").read_text())
    for key, value in edit.items():
        saved[key] = {**saved[key], **value} if isinstance(value, dict) else value
    (folder / "config.json").write_text(json.dumps(saved))
    before = tree(tmp_path)
    code, err = run(["evaluate", "--checkpoint", str(folder), "--scenes", "1", "--out", str(tmp_path / "o")], capsys)
    assert_error(code, err, str(folder / "config.json"), culprit)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("setting,culprit", [
    ("steps=abc", "steps"), ("steps=2.5", "steps"), ("optimizer.lr=abc", "optimizer.lr"),
    ("data.augment='false'", "data.augment"), ("optimizer.learning_rate=1", "learning_rate"),
    ("layout=zero3", "layout"), ("data.train=bogus(", "data.train"),
])
def test_bad_overrides_write_nothing(tmp_path, capsys, setting, culprit):
    workdir = tmp_path / "run"
    code, err = run(["train", "--set", f"workdir={workdir}", "--set", "mesh_data=1", "--set", setting], capsys)
    assert_error(code, err, culprit)
    assert not workdir.exists()


def test_training_config_file_of_wrong_type(tmp_path, capsys):
    path = tmp_path / "cfg.py"
    path.write_text("import dataclasses\nfrom fast3r_jax.config import TrainConfig\n\n\ndef get_config():\n"
                    f"    return dataclasses.replace(TrainConfig(), steps=2.5, workdir={str(tmp_path / 'run')!r})\n")
    code, err = run(["train", "--config", str(path)], capsys)
    assert_error(code, err, str(path), "steps")
    assert not (tmp_path / "run").exists()
    code, err = run(["train", "--config", str(tmp_path / "missing.py")], capsys)
    assert_error(code, err, "missing.py")


def test_resume_with_nothing_left_to_train(tmp_path, capsys):
    """A workdir whose checkpoint (written the way the training loop writes them) is at step 5: steps=5 and steps=3
    have nothing left to do and say so, without touching the run."""
    workdir = tmp_path / "run"
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data")) as mgr:
        mgr.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave({"step": np.zeros(1)}),
                                            data=ocp.args.JsonSave({})))
        mgr.wait_until_finished()
    before = tree(workdir)
    for steps in (5, 3):
        code, err = run(["train", "--set", f"workdir={workdir}", "--set", "mesh_data=1", "--set", f"steps={steps}"],
                        capsys)
        assert_error(code, err, str(workdir), f"steps={steps}")
    assert tree(workdir) == before


# ----------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------


def _data_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in (folder / "params").rglob("*") if p.is_file() and p.parent.name == "d")


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_checkpoint(tmp_path, capsys, checkpoint, damage):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    for data in _data_files(folder):
        if damage == "truncate":
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        elif damage == "delete":
            data.unlink()
        else:
            raw = bytearray(data.read_bytes())
            for i in range(0, len(raw), 7):
                raw[i] ^= 0xFF
            data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=str(folder)):
        load_pretrained(folder)
    before = tree(tmp_path)
    code, err = run(["evaluate", "--checkpoint", str(folder), "--scenes", "1", "--out", str(tmp_path / "o")], capsys)
    assert_error(code, err, str(folder))
    assert tree(tmp_path) == before


def test_damaged_init_checkpoint_stops_training(tmp_path, capsys, checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    for data in _data_files(folder):
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    before = tree(folder)
    code, err = run(["train", "--set", f"init={folder}", "--set", f"workdir={tmp_path / 'run'}", "--set", "mesh_data=1"],
                    capsys)
    assert_error(code, err, str(folder))
    assert tree(folder) == before


@pytest.mark.parametrize("out", ["snap", "parent"])
def test_converter_never_replaces_its_source(tmp_path, capsys, out):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps(TINY))
    (snapshot / "model.safetensors").write_bytes(b"not read")
    target = snapshot if out == "snap" else tmp_path
    before = tree(tmp_path)
    code, err = run(["convert", str(snapshot), str(target), "--overwrite"], capsys)
    assert_error(code, err, str(target))
    assert tree(tmp_path) == before


def test_full_disk_during_conversion(tmp_path, capsys, monkeypatch):
    """Orbax wraps the disk's OSError in a bare Exception: one line naming the cause, no temporary folder left."""
    def full(self, directory, *args, **kwargs):
        raise Exception("save failed") from OSError(errno.ENOSPC, "No space left on device", str(directory))

    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps(TINY))
    save_file({k: v for k, v in tiny_state_dict().items() if ".layer_rn." not in k}, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", full)
    before = tree(tmp_path)
    code, err = run(["convert", str(snapshot), str(tmp_path / "out")], capsys)
    assert_error(code, err, "No space left on device")
    assert tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["snap"]


# ----------------------------------------------------------------------------
# evaluate: dataset files and --out.
# ----------------------------------------------------------------------------


def _co3d(tmp_path) -> tuple[pathlib.Path, list[str]]:
    data = tmp_path / "data"
    write_co3d(data)
    argv = ["evaluate", "--dataset", "co3d", "--data-root", str(data), "--views", "2", "--scenes", "1",
            "--resolution", "32x16", "--out", str(tmp_path / "o")]
    return data, argv


def test_evaluate_bad_dataset_files(tmp_path, capsys):
    data, argv = _co3d(tmp_path)
    listing = data / "selected_seqs_test.json"
    table = json.loads(listing.read_text())
    good = listing.read_text()

    (tmp_path / "x").mkdir()
    listing.write_text(json.dumps({"../x": {"seq": [1]}}))
    before = tree(tmp_path)
    code, err = run(argv, capsys)
    assert_error(code, err, str(listing), "../x")
    assert tree(tmp_path) == before

    category = next(c for c, seqs in table.items() if seqs)
    listing.write_text(json.dumps({category: {next(iter(table[category])): []}}))
    code, err = run(argv, capsys)
    assert_error(code, err, str(listing), "no frames")

    listing.write_text(good)
    metas = sorted(data.rglob("*.npz"))
    originals = {meta: meta.read_bytes() for meta in metas}
    for meta in metas:
        meta.write_bytes(b"PK\x03\x04 not a zip")
    before = tree(tmp_path)
    code, err = run(argv, capsys)
    assert_error(code, err, "CO3D metadata file", str(data))
    assert tree(tmp_path) == before

    for meta, original in originals.items():
        with np.load(io.BytesIO(original)) as z:
            fields = dict(z)
        np.savez(meta, **(fields | {"camera_intrinsics": np.ones(2, np.float32)}))
    code, err = run(argv, capsys)
    assert_error(code, err, "camera_intrinsics", str(data))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("parent", ["read-only", "file"])
def test_evaluate_unwritable_out_is_refused_before_the_run(tmp_path, capsys, monkeypatch, parent):
    from fast3r_jax.evaluation import protocols  # noqa: PLC0415

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran before --out was checked")

    monkeypatch.setattr(protocols, "evaluate", never)
    locked = tmp_path / "locked"
    if parent == "file":
        locked.write_text("a file, not a folder")
    else:  # read-only as a user without write permission sees it (root writes anywhere, so the check is faked)
        locked.mkdir()
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if pathlib.Path(path) == locked and
                            mode & os.W_OK else access(path, mode, **kw))
    before = tree(tmp_path)
    code, err = run(["evaluate", "--scenes", "1", "--out", str(locked / "o")], capsys)
    assert_error(code, err, str(locked))
    assert tree(tmp_path) == before


def test_evaluate_out_of_an_earlier_run_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old_plot.png").write_bytes(b"mine")
    code, err = run(["evaluate", "--scenes", "1", "--out", str(out), "--overwrite"], capsys)
    assert_error(code, err, str(out), "not written by fast3r-jax")
    assert (out / "old_plot.png").read_bytes() == b"mine"
