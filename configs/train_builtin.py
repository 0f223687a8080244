"""The recipe of the built-in model (fast3r_jax/assets/builtin): a small Fast3R trained on synthetic scenes.

The shipped weights come from two runs on one H100 (data-bound at ~470 images/s with 14 loader workers):

    python train.py --config configs/train_builtin.py --set workdir=runs/builtin1 --set time_limit_s=370
        # stopped by the time limit at step 1675 of the 4000-step schedule
    python benchmarks/builtin_model.py --run runs/builtin1 --out runs/builtin1_export
    python train.py --config configs/train_builtin.py --set workdir=runs/builtin2 \
        --set init=runs/builtin1_export --set steps=1800 --set optimizer.total_steps=1800 \
        --set optimizer.warmup_steps=100 --set optimizer.lr=2e-4
    python benchmarks/builtin_model.py --run runs/builtin2 --out fast3r_jax/assets/builtin

ViT encoder 192 wide x 4 blocks, fusion transformer 192 wide x 6 blocks, DPT heads with 64 features; 6 views of
128x96 per scene, batch 16, AdamW 3e-4 with warm-up and cosine decay. The exported parameters are stored in
bfloat16 (13.6 MB).
"""

from fast3r_jax import config
from fast3r_jax.config import DataConfig, OptimizerConfig, TrainConfig

STEPS = 4000


def model() -> config.Fast3RConfig:
    return config.Fast3RConfig(
        encoder=config.EncoderConfig(embed_dim=192, num_heads=3, depth=4),
        fusion=config.FusionConfig(embed_dim=192, num_heads=3, depth=6),
        head=config.HeadConfig(feature_dim=64, last_dim=32, layer_dims=(32, 64, 128, 128)),
    )


def get_config() -> TrainConfig:
    return TrainConfig(
        model=model(),
        optimizer=OptimizerConfig(lr=3e-4, warmup_steps=200, total_steps=STEPS, grad_clip_norm=1.0),
        data=DataConfig(
            train="200_000 @ synthetic(num_scenes=200_000, num_views=6, resolution=(128, 96), split='train')",
            val="32 @ synthetic(num_scenes=32, num_views=6, resolution=(128, 96), split='val')",
            resolutions=((128, 96),), augment=True, aug_crop=0, batch_size=16, workers=14),
        steps=STEPS, dtype="bfloat16", layout="replicated", workdir="runs/builtin",
        log_every=50, val_every=1000, val_batches=2, ckpt_every=250, keep=2, time_limit_s=None,
    )
