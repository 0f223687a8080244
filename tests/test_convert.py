"""The converter end to end: upstream weights (tiny golden, written as a Hugging Face folder) -> Orbax -> outputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from fast3r_jax import config as config_lib
from fast3r_jax import load_pretrained, predict
from fast3r_jax.checkpoint import CheckpointError
from fast3r_jax.cli import main as cli_main
from fast3r_jax.convert.table import params_from_torch, params_to_torch
from fast3r_jax.inference.engine import Engine
from fast3r_jax.model.fast3r import OUTPUT_KEYS
from fast3r_jax.model.params import CheckpointMismatchError
from tests.helpers.parity import assert_within, golden_views, output_errors
from tests.helpers.reference_weights import DATA, tiny_state_dict
from tests.helpers.upstream_configs import TINY

ALIAS = "downstream_head.dpt.scratch.layer_rn.2.weight"


@pytest.fixture(scope="module")
def state_dict():
    return tiny_state_dict()


def write_hf(folder, state_dict, config=TINY):
    """A Hugging Face snapshot as upstream's hub mixin saves it: shared (aliased) tensors stored once."""
    folder.mkdir()
    save_file({k: v for k, v in state_dict.items() if ".layer_rn." not in k}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_hf_folder_converts_and_reproduces_golden(tmp_path, state_dict):
    src = write_hf(tmp_path / "hf", state_dict)
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 0
    config, params = load_pretrained(tmp_path / "out")
    assert config == config_lib.tiny()
    z = np.load(DATA / "tiny_caseA.npz")
    assert_within(output_errors(predict(config, params, golden_views(z)), z, "ids_default"), 1e-5, count=12)
    notes = json.loads((tmp_path / "out" / "manifest.json").read_text())["notes"]
    assert notes["source"] == "huggingface" and notes["tensors"] == 280


def test_roundtrip_to_torch_layout_is_exact(state_dict):
    cfg = config_lib.tiny()
    back = params_to_torch(params_from_torch(state_dict, cfg), cfg)
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("edit,names", [
    ("rename", ["missing", "encoder.enc_norm.weight", "unexpected", "encoder.enc_norm.gamma"]),
    ("drop", ["missing", "decoder.dec_blocks.3.mlp.fc1.bias"]),
    ("reshape", ["mis-shaped", "decoder.decoder_embed.weight"]),
    ("extra", ["unexpected", "decoder.extra_token"]),
    ("int32", ["not floating point", "encoder.enc_norm.bias: int32"]),
    ("nan", ["NaN or infinite", "decoder.dec_norm.weight: 2 of 64 values"]),
])
def test_bad_checkpoints_fail_naming_the_tensor(tmp_path, state_dict, edit, names, capsys):
    sd = dict(state_dict)
    if edit == "rename":
        sd["encoder.enc_norm.gamma"] = sd.pop("encoder.enc_norm.weight")
    elif edit == "drop":
        del sd["decoder.dec_blocks.3.mlp.fc1.bias"]
    elif edit == "reshape":
        sd["decoder.decoder_embed.weight"] = sd["decoder.decoder_embed.weight"][:, :-1]
    elif edit == "int32":
        sd["encoder.enc_norm.bias"] = sd["encoder.enc_norm.bias"].astype(np.int32)
    elif edit == "nan":
        sd["decoder.dec_norm.weight"] = sd["decoder.dec_norm.weight"].copy()
        sd["decoder.dec_norm.weight"][[3, 7]] = np.nan, -np.inf
    else:
        sd["decoder.extra_token"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        params_from_torch(sd, config_lib.tiny())
    for name in names:
        assert name in str(err.value)
    src = write_hf(tmp_path / "hf", sd)
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 2
    assert names[1] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_aliased_dpt_tensors_must_agree(state_dict):
    sd = dict(state_dict)
    params_from_torch(sd, config_lib.tiny())  # both alias keys present and equal: fine
    sd[ALIAS] = sd[ALIAS] + 1.0
    with pytest.raises(CheckpointMismatchError, match="layer_rn.2"):
        params_from_torch(sd, config_lib.tiny())


def test_dust3r_checkpoint_initialises_encoder_and_head(tmp_path, state_dict):
    rename = {"encoder.patch_embed.": "patch_embed.", "encoder.enc_blocks.": "enc_blocks.",
              "encoder.enc_norm.": "enc_norm.", "downstream_head.": "downstream_head1."}
    dust3r = {}
    for key, value in state_dict.items():
        for old, new in rename.items():
            if key.startswith(old) and ".layer_rn." not in key:
                dust3r[new + key[len(old):]] = value
    dust3r["dec_blocks2.0.norm1.weight"] = np.ones(64, np.float32)  # DUSt3R's second decoder: not used
    dust3r["decoder_embed.weight"] = np.ones((64, 96), np.float32)
    save_file(dust3r, str(tmp_path / "dust3r.safetensors"))
    assert cli_main(["convert", str(tmp_path / "dust3r.safetensors"), str(tmp_path / "out"), "--config", "tiny"]) == 0
    _, params = load_pretrained(tmp_path / "out")
    back = params_to_torch(params, config_lib.tiny())
    for key in ("encoder.enc_blocks.1.attn.qkv.weight", "downstream_head.dpt.head.4.weight"):
        np.testing.assert_array_equal(back[key], state_dict[key])
    assert not np.array_equal(back["decoder.dec_blocks.0.attn.qkv.weight"],
                              state_dict["decoder.dec_blocks.0.attn.qkv.weight"])
    notes = json.loads((tmp_path / "out" / "manifest.json").read_text())["notes"]
    assert notes["initialised_from_checkpoint"] == ["encoder", "global_head"]
    assert notes["freshly_initialised"] == ["fusion", "local_head"]
    assert notes["unused_checkpoint_prefixes"] == ["dec_blocks2", "decoder_embed"]


def test_config_flag_conflicts_with_snapshot_config(tmp_path, state_dict, capsys):
    src = write_hf(tmp_path / "hf", state_dict)
    assert cli_main(["convert", str(src), str(tmp_path / "out"), "--config", "tiny"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_wrong_preset_for_a_checkpoint_is_reported(tmp_path, state_dict, capsys):
    save_file({k: v for k, v in state_dict.items()}, str(tmp_path / "w.safetensors"))
    assert cli_main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "out"), "--config", "large"]) == 2
    assert "mis-shaped" in capsys.readouterr().err


def test_load_pretrained_onto_a_sharding_and_bad_folders(tmp_path, state_dict):
    src = write_hf(tmp_path / "hf", state_dict)
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 0
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    _, params = load_pretrained(tmp_path / "out", sharding=sharding)
    assert all(leaf.sharding == sharding for leaf in jax.tree.leaves(params))
    config, bf16 = load_pretrained(tmp_path / "out", dtype=jnp.bfloat16)  # cast while restoring
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(bf16))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(jnp.bfloat16), b), params, bf16)
    # The model casts its parameters to the compute dtype: bfloat16 ones give the same bfloat16 outputs.
    views = [{"img": np.random.default_rng(i).uniform(-1, 1, (1, 3, 32, 48)).astype(np.float32)} for i in range(2)]
    outputs = [Engine(config, p, "bfloat16")(views, np.arange(2)) for p in (params, bf16)]
    for key in OUTPUT_KEYS:
        np.testing.assert_array_equal(np.asarray(outputs[0][1][key]), np.asarray(outputs[1][1][key]))
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path / "nowhere")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["params"]["fusion.embed.kernel"] = [1, 2]
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="fusion.embed.kernel"):
        load_pretrained(tmp_path / "out")
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 2  # refuses to overwrite
