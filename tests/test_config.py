import pathlib

import pytest

from fast3r_jax import config as config_lib
from fast3r_jax import config_from_upstream
from fast3r_jax.checkpoint import load_config
from fast3r_jax.reconstruct import DEFAULT_CHECKPOINT
from tests.helpers.upstream_configs import LARGE, TINY, upstream_config


def test_upstream_tiny_and_large_configs_map_to_presets():
    assert config_from_upstream(TINY) == config_lib.tiny()
    assert config_from_upstream(LARGE) == config_lib.large()


def test_other_upstream_config_is_built_from_its_args():
    cfg = config_from_upstream(upstream_config(enc_dim=128, enc_heads=4, enc_depth=3, dec_dim=96, dec_heads=6,
                                               dec_depth=12))
    assert (cfg.encoder.embed_dim, cfg.encoder.num_heads, cfg.encoder.depth) == (128, 4, 3)
    assert (cfg.fusion.embed_dim, cfg.fusion.num_heads, cfg.fusion.depth) == (96, 6, 12)
    assert cfg.hooks == (0, 6, 9, 12)
    assert cfg.image_size == 512  # upstream's img_size: the size the model was trained at


@pytest.mark.parametrize("img_size,expected", [(224, 224), ([384, 512], 512), (None, 512)])
def test_upstream_img_size_is_the_default_input_size(img_size, expected):
    d = upstream_config()
    if img_size is None:
        del d["encoder_args"]["img_size"]
    else:
        d["encoder_args"]["img_size"] = img_size
    assert config_from_upstream(d).image_size == expected


def test_json_roundtrip_keeps_infinite_modes():
    cfg = config_lib.large()
    again = config_lib.Fast3RConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.head.depth_mode == ("exp", float("-inf"), float("inf"))


@pytest.mark.parametrize("section,key,value,match", [
    ("encoder_args", "encoder_type", "dino_v2", "encoder_type"),
    ("decoder_args", "decoder_type", "llama", "decoder_type"),
    ("decoder_args", "drop", 0.1, "drop"),
    ("head_args", "with_local_head", False, "with_local_head"),
    ("head_args", "depth_mode", ["exp", 0.0, 10.0], "bounded"),
    ("encoder_args", "new_knob", 3, "new_knob"),
    ("decoder_args", "enc_embed_dim", 768, "enc_embed_dim"),
    ("encoder_args", "img_size", 200, "image_size must be a positive multiple of the patch size 16"),
    ("encoder_args", "img_size", "512", "img_size"),
])
def test_unsupported_upstream_settings_raise(section, key, value, match):
    d = upstream_config()
    d[section] = {**d[section], key: value}
    with pytest.raises(ValueError, match=match):
        config_from_upstream(d)


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="attention"):
        config_lib.tiny().replace(attention="flash")
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        config_lib.tiny().replace(remat=True, remat_policy="everything")
    with pytest.raises(ValueError, match="divisible"):
        config_lib.Fast3RConfig(encoder=config_lib.EncoderConfig(embed_dim=100, num_heads=3))
    with pytest.raises(ValueError, match="unknown"):
        config_lib.Fast3RConfig.from_dict({"encoder": {"embed_dim": 96, "bogus": 1}})
    for size in (0, 100):
        with pytest.raises(ValueError, match=f"image_size must be a positive multiple of the patch size 16, "
                                             f"got {size}"):
            config_lib.tiny().replace(image_size=size)
    for weight in (-0.5, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="pose_weight must be a finite number >= 0"):
            config_lib.TrainConfig(pose_weight=weight)


def test_builtin_recipe_is_the_shipped_models_config():
    """configs/train_builtin.py trains (and continues from) exactly the model shipped as the built-in default."""
    root = pathlib.Path(__file__).parents[1]
    recipe = config_lib.load_config_file(str(root / "configs/train_builtin.py"))
    assert recipe.model == load_config(DEFAULT_CHECKPOINT) and recipe.model.image_size == 128
    assert (root / recipe.init).resolve() == DEFAULT_CHECKPOINT.resolve()


def test_experiment_config_files_load(tmp_path):
    root = pathlib.Path(__file__).parents[1]
    assert config_lib.load_config_file(str(root / "configs/fast3r_tiny.py")) == config_lib.tiny()
    assert config_lib.load_config_file(str(root / "configs/fast3r_large.py")) == config_lib.large()
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="get_config"):
        config_lib.load_config_file(str(tmp_path / "bad.py"))
    with pytest.raises(ValueError, match="preset"):
        config_lib.load_config_file("huge")
