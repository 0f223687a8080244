"""The recipe of the built-in model (fast3r_jax/assets/builtin): a small Fast3R trained on synthetic scenes.

ViT encoder 192 wide x 8 blocks, fusion transformer 192 wide x 12 blocks, DPT heads with 64 features (11.3 M
parameters); exported in bfloat16 storage (17.5 MB). Batches are rendered on the GPU (data.rendered,
fast3r_jax/data/rendered.py: 8 host processes draw scenes and cameras a few batches ahead, the device ray casts
them), so training is compute-bound and needs no grain. Each batch draws one of five (views, samples) buckets, 2, 8,
24, 64 or 192 views per scene at 192 images per batch, and one of two resolutions, 128x96 landscape or 96x128
portrait, marked 'mixed' so that both orientations share a step: 5 compiled step shapes instead of 10. The price:
the model runs its DPT heads both ways, and the heads are a large share of this small model's FLOPs
(fast3r_jax.model.flops), so a step costs more; it pays while compilation takes much of a call, as below, and not in
a long run (set mixed_orientation=False there). Each sample's views reach a span_fraction of the usual way along
their camera path, drawn log-uniformly from 0.1 to 2: views 0.6-32 degrees apart, so that both dense captures and
wide ones are trained on. Image ids are random per sample and step (upstream's). No augmentation. AdamW 5e-5 after
100 warm-up steps, cosine decay to 1e-6 at STEPS, gradients clipped at 1. The step is compiled for all five shapes
at the start, concurrently (TrainConfig.compile_ahead).

It continues from the shipped weights (init), so each shipped run builds on all the runs before it: README's "The
built-in model" lists the runs behind the shipped weights, with their devices, times and losses. The last, whose
weights ship, is this config as committed. Compiling the five step shapes took 270-680 s on fresh H100s (33-44 s when
loaded from the persistent compilation cache, `--compilation-cache`, on by default, kept under runs/): size `steps`
to your time on one machine, so that the run ends annealed. `time_limit_s` ends a run early with a checkpoint and the
same command resumes it; so does SIGTERM (e.g. from `timeout`), after the current step. Do not set
--xla_gpu_autotune_level=0 to save compile time: steps then take 2.7 s.

From the repository root:

    export PYTHONPATH=$PWD
    python train.py --config configs/train_builtin.py --set workdir=runs/builtin
    python benchmarks/builtin_model.py --run runs/builtin --out runs/builtin_export

The second command exports the last checkpoint to runs/builtin_export (bfloat16 storage) and evaluates it on
held-out scenes against random weights; that folder then replaces fast3r_jax/assets/builtin.
`python benchmarks/rendered_data.py` measures the renderer alone.
"""

from fast3r_jax import config
from fast3r_jax.config import DataConfig, OptimizerConfig, TrainConfig

STEPS = 14_000


def model() -> config.Fast3RConfig:
    return config.Fast3RConfig(
        encoder=config.EncoderConfig(embed_dim=192, num_heads=3, depth=8),
        fusion=config.FusionConfig(embed_dim=192, num_heads=3, depth=12),
        head=config.HeadConfig(feature_dim=64, last_dim=32, layer_dims=(32, 64, 128, 128)),
        image_size=128,  # the long side of its training images: reconstruct's default --size
    )


def get_config() -> TrainConfig:
    rendered = config.RenderedDataConfig(num_scenes=1_000_000, split="train",
                                         buckets=((2, 96), (8, 24), (24, 8), (64, 3), (192, 1)),
                                         resolutions=((128, 96), (96, 128)), mixed_orientation=True, workers=8,
                                         span_fraction=(0.1, 2.0))
    return TrainConfig(
        model=model(),
        init="fast3r_jax/assets/builtin",
        optimizer=OptimizerConfig(lr=5e-5, warmup_steps=100, total_steps=STEPS, grad_clip_norm=1.0),
        data=DataConfig(rendered=rendered),
        steps=STEPS, dtype="bfloat16", layout="replicated", workdir="runs/builtin",
        log_every=100, val_every=1000, val_batches=0, ckpt_every=1000, keep=2, time_limit_s=470.0,
    )
