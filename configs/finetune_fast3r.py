"""Fine-tuning the converted official Fast3R weights on your data (same model, lower learning rate).

    python -m fast3r_jax.convert path/to/Fast3R_ViT_Large_512 ckpt/fast3r_large
    FAST3R_DATA_ROOT=/data python train.py --config configs/finetune_fast3r.py --set init=ckpt/fast3r_large
"""

import dataclasses

import train_large  # noqa: E402  (configs/ is on the path when train.py loads a config by file)

from fast3r_jax.train.loop import TrainConfig


def get_config() -> TrainConfig:
    base = train_large.get_config()
    optimizer = dataclasses.replace(base.optimizer, lr=2e-5, warmup_steps=500, total_steps=10_000)
    return dataclasses.replace(base, optimizer=optimizer, steps=10_000, init="ckpt/fast3r_large",
                               workdir="runs/finetune_fast3r")
