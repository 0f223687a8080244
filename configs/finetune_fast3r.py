"""Fine-tuning the converted official Fast3R weights on your data (same model, lower learning rate).

    python -m fast3r_jax.convert path/to/Fast3R_ViT_Large_512 ckpt/fast3r_large
    FAST3R_DATA_ROOT=/data python train.py --config configs/finetune_fast3r.py --set init=ckpt/fast3r_large
"""

import dataclasses
import pathlib

from fast3r_jax.config import TrainConfig, load_config_file


def get_config() -> TrainConfig:
    base = load_config_file(pathlib.Path(__file__).with_name("train_large.py"), expect=TrainConfig)
    optimizer = dataclasses.replace(base.optimizer, lr=2e-5, warmup_steps=500, total_steps=10_000)
    return dataclasses.replace(base, optimizer=optimizer, steps=10_000, init="ckpt/fast3r_large",
                               workdir="runs/finetune_fast3r")
