"""The recipe of the built-in model (fast3r_jax/assets/builtin): a small Fast3R trained on synthetic scenes.

ViT encoder 192 wide x 4 blocks, fusion transformer 192 wide x 6 blocks, DPT heads with 64 features; exported in
bfloat16 storage (10.6 MB). Batches are rendered on the GPU (data.rendered, fast3r_jax/data/rendered.py: 8 host
processes draw scenes and cameras a few batches ahead, the device ray casts them), so training is compute-bound
and needs no grain. Each batch draws one of five (views, samples) buckets, 2, 8, 24, 64 or 192 views per scene at
192 images per batch, and one of two resolutions, 128x96 landscape or 96x128 portrait, marked 'mixed' so that both
orientations share a step: 5 compiled step shapes instead of 10. The price: the model runs its DPT heads both ways,
and here the heads are 57-76% of the forward FLOPs (fast3r_jax.model.flops), so a step costs up to 1.7x; it pays
while compilation takes much of a call, as below, and not in a long run (set mixed_orientation=False there). Each
sample's views reach a span_fraction of the usual way along their camera path, drawn log-uniformly from 0.1 to 1:
views 0.6-16 degrees apart, so that dense captures (many views of one stretch of path) are trained on too. Image
ids are random per sample and step (upstream's). No augmentation. AdamW 1e-4 after 100 warm-up steps, cosine decay
to 1e-6 at STEPS, gradients clipped at 1. The step is compiled for all five shapes at the start, concurrently
(TrainConfig.compile_ahead).

It continues from the earlier shipped weights (init): the architecture is unchanged, and in a run of minutes
continuing beats starting over, so each shipped run builds on all the runs before it. Measured on one H200 (jax
0.11.2): a step is 0.83-0.96 TFLOP at up to 64 views (fast3r_jax.model.flops) and takes 16-21 ms on the device;
then 2,700-5,200 images/s (17-33 steps/s). Compiling the five shapes took about 420 s when each was compiled as
the batches first met it, 272 s compiled ahead and concurrently on the machine's 16 cores, 33-44 s when loaded from
the persistent compilation cache (`--compilation-cache`, on by default, kept under runs/ where the machine keeps
that folder between calls). The shipped weights come from eight runs in a row, each initialised from the one
before: 6,000 steps at lr 2e-4 (2026-12-02); on 2026-12-03, with four buckets (no 192 views), 3,038 of 6,000 steps
at lr 2e-4, 3,000 at 1.2e-4, 2,570 of 3,500 at 1e-4, 2,600 at 1e-4 and 8,259 of 10,000 at 1e-4 (each stopped by
`--set time_limit_s` or at its last step); 17,009 of 18,000 steps at lr 1e-4 with the 192-view bucket added (three
calls); then this config, 16,000 steps at lr 1e-4 with drawn spans, in three calls of the same command on one
machine: stopped by its time limit (470 s) at steps 3,351 and 12,850 and resumed, the last call reaching step
16,000. `time_limit_s` ends a run early with a checkpoint and the same command resumes it; so does SIGTERM (e.g.
from `timeout`), after the current step, which also covers a call whose compilation alone takes most of its time
(272 s on a fresh H200 machine with no compilation cache, above). Do not set
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

STEPS = 16_000


def model() -> config.Fast3RConfig:
    return config.Fast3RConfig(
        encoder=config.EncoderConfig(embed_dim=192, num_heads=3, depth=4),
        fusion=config.FusionConfig(embed_dim=192, num_heads=3, depth=6),
        head=config.HeadConfig(feature_dim=64, last_dim=32, layer_dims=(32, 64, 128, 128)),
    )


def get_config() -> TrainConfig:
    rendered = config.RenderedDataConfig(num_scenes=1_000_000, split="train",
                                         buckets=((2, 96), (8, 24), (24, 8), (64, 3), (192, 1)),
                                         resolutions=((128, 96), (96, 128)), mixed_orientation=True, workers=8,
                                         span_fraction=(0.1, 1.0))
    return TrainConfig(
        model=model(),
        init="fast3r_jax/assets/builtin",
        optimizer=OptimizerConfig(lr=1e-4, warmup_steps=100, total_steps=STEPS, grad_clip_norm=1.0),
        data=DataConfig(rendered=rendered),
        steps=STEPS, dtype="bfloat16", layout="replicated", workdir="runs/builtin",
        log_every=100, val_every=1000, val_batches=0, ckpt_every=1000, keep=2, time_limit_s=470.0,
    )
