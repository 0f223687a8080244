"""The recipe of the built-in model (fast3r_jax/assets/builtin): a small Fast3R trained on synthetic scenes.

ViT encoder 192 wide x 4 blocks, fusion transformer 192 wide x 6 blocks, DPT heads with 64 features; exported in
bfloat16 storage (13.6 MB). Batches are rendered on the GPU (data.rendered, fast3r_jax/data/rendered.py: 8 host
processes draw scenes and cameras a few batches ahead, the device ray casts them), so training is compute-bound
and needs no grain. Each batch draws one of four (views, samples) buckets, 2, 8, 24 or 64 views per scene at 192
images per batch, and one of two resolutions, 128x96 landscape or 96x128 portrait, marked 'mixed' so that both
orientations share a step: 4 compiled step shapes instead of 8. The price: the model runs its DPT heads both ways,
and here the heads are 57-76% of the forward FLOPs (fast3r_jax.model.flops), so a step costs up to 1.7x; it pays
while compilation takes most of a call, as below, and not in a long run (set mixed_orientation=False there). Image
ids are random per sample and step (upstream's). No augmentation. AdamW 2e-4 after 200 warm-up steps, cosine decay
to 1e-6 at STEPS, gradients clipped at 1.

It continues from the shipped weights (init): the architecture is unchanged, and in a run of minutes continuing
beats starting over (nothing of the earlier runs' 330k images is thrown away, and a larger model from scratch would
see fewer images in the same time). Measured on one H200 (jax 0.11.2, 2026-12-02): a step is 0.83-0.96 TFLOP
(fast3r_jax.model.flops) and takes 16-21 ms on the device, 24-37 ms in the stream mixing the shapes with the host
workers (4,000-6,800 images/s, against the 470 of host rendering), so 9000 steps need 4-6 minutes of steps. Compiling
is the larger cost: the six shapes of the earlier three-bucket recipe took about 200 s, the eight of this one 400 s
(twice: one after another as the steps met them, and all at once in threads, which XLA's autotuning on the one GPU
did not speed up), so a 10-minute call ended at `time_limit_s` (480 s of the loop, compilation included) after
about 1,300 steps, with a checkpoint; with half the compilations (not yet measured) the same call should make
about twice as many steps despite their cost. A second call on the same machine resumes without compiling:
`train.py` keeps its compiled steps in the persistent compilation cache (`--compilation-cache`, on by default).
Do not set --xla_gpu_autotune_level=0 to save compile time: steps then take 2.7 s. From the repository root:

    export PYTHONPATH=$PWD
    python train.py --config configs/train_builtin.py --set workdir=runs/builtin3
    python benchmarks/builtin_model.py --run runs/builtin3 --out runs/builtin3_export

The second command exports the last checkpoint to runs/builtin3_export (bfloat16 storage) and evaluates it on
held-out scenes against random weights; that folder then replaces fast3r_jax/assets/builtin.
`python benchmarks/rendered_data.py` measures the renderer alone.
"""

from fast3r_jax import config
from fast3r_jax.config import DataConfig, OptimizerConfig, TrainConfig

STEPS = 9000


def model() -> config.Fast3RConfig:
    return config.Fast3RConfig(
        encoder=config.EncoderConfig(embed_dim=192, num_heads=3, depth=4),
        fusion=config.FusionConfig(embed_dim=192, num_heads=3, depth=6),
        head=config.HeadConfig(feature_dim=64, last_dim=32, layer_dims=(32, 64, 128, 128)),
    )


def get_config() -> TrainConfig:
    rendered = config.RenderedDataConfig(num_scenes=1_000_000, split="train",
                                         buckets=((2, 96), (8, 24), (24, 8), (64, 3)),
                                         resolutions=((128, 96), (96, 128)), mixed_orientation=True, workers=8)
    return TrainConfig(
        model=model(),
        init="fast3r_jax/assets/builtin",
        optimizer=OptimizerConfig(lr=2e-4, warmup_steps=200, total_steps=STEPS, grad_clip_norm=1.0),
        data=DataConfig(rendered=rendered),
        steps=STEPS, dtype="bfloat16", layout="replicated", workdir="runs/builtin",
        log_every=100, val_every=1000, val_batches=0, ckpt_every=1000, keep=2, time_limit_s=480.0,
    )
