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

It continues from the shipped weights (init), so each shipped run builds on all the runs before it. The shipped
weights come from thirteen runs in a row, each initialised from the one before. The first eight trained the model at
encoder 4 / fusion 6 blocks (10.6 MB), on one H200 (jax 0.11.2): 6,000 steps at lr 2e-4 (2026-12-02); on 2026-12-03,
with four buckets (no 192 views), 3,038 of 6,000 steps at lr 2e-4, 3,000 at 1.2e-4, 2,570 of 3,500 at 1e-4, 2,600 at
1e-4 and 8,259 of 10,000 at 1e-4 (each stopped by `--set time_limit_s` or at its last step); 17,009 of 18,000 steps
at lr 1e-4 with the 192-view bucket added; then 16,000 steps at lr 1e-4 with spans drawn from 0.1 to 1, in three
calls. Then that model was grown to the depths above (`--set deepen_init=True`: each old block preceded by a new
identity block, the same function, fast3r_jax.model.params.deepen) and trained 10,000 steps with this config (at lr
1e-4) on one H100 (jax 0.11.2, 2026-12-05), in two calls of the same command on one machine: compiling the five
shapes took about 270 s, the run stopped at its time limit (490 s) at step 3,317 and the second call resumed it and
finished in 355 s of steps; 3,000-4,200 images/s (12-23 steps/s) once compiled. Before it, a 16,000-step attempt with
the same model and data, on the same machine when fresh, had not finished compiling after 555 s and was stopped
before its first step (a SIGTERM waits for the compilation to end); on 2026-12-06 another fresh H100 took about 680 s
from the command's start to its first step, then ran 19 steps/s. On an H200 the 4/6-block model compiled in 272 s
(about 420 s when each shape was compiled as the batches first met it, 33-44 s when loaded from the persistent
compilation cache, `--compilation-cache`, on by default, kept under runs/ where the machine keeps that folder between
calls). The tenth run was this config at 10,000 steps (lr 5e-5 since) from the ninth's weights (the image_size field
was added to its config.json afterwards) on a fresh H100 (jax 0.11.2, 2026-12-06), started detached so that it went
on across calls on one machine (`--set time_limit_s=3000`): about 360 s from the command's start to the first step,
then 10,000 steps in 602 s (16.6 steps/s, 3,100-4,000 images/s); the training loss, averaged over 500 steps, went
from -0.025 to -0.050. The eleventh continued it for 2,628 steps at lr 3e-5 on an H100 (2026-12-06), stopped before
the end of its schedule, so not annealed. The twelfth was this config at 14,000 steps from the eleventh's weights, on
a fresh H100 (jax 0.11.2, 2026-12-06), started the same way: about 290 s from the command's start to the first step,
then 14,000 steps in 753 s (18.6 steps/s, 3,200-4,200 images/s); the training loss, averaged over 500 steps, went
from -0.042 to -0.061. The thirteenth, whose weights ship, is this config as committed (16,000 steps) from the
twelfth's weights, on a fresh H100 (jax 0.11.2, 2026-12-06), started the same way with `--set time_limit_s=1300`:
about 570 s from the start of compilation to the first step, then about 730 s of steps (20 steps/s, about
3,800 images/s), stopped by its time limit at step 14,970, where the cosine had brought the lr down to 1.5e-6 (1e-6
at its end); the training loss, averaged over 500 steps, went from -0.054 to -0.074. `time_limit_s` ends a run early
with a checkpoint and the same command resumes it; so does SIGTERM (e.g. from `timeout`), after the current step. Do
not set --xla_gpu_autotune_level=0 to save compile time: steps then take 2.7 s.

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
