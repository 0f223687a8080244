"""Fast3R ViT-L training as upstream's long run: 20 views per sample, six datasets, aspect-ratio buckets.

    FAST3R_DATA_ROOT=/data python train.py --config configs/train_large.py --set mesh_tensor=1

Datasets in upstream's preprocessed layouts under $FAST3R_DATA_ROOT (see fast3r_jax/data/readers.py); 80,000
samples of each per epoch; batch 1 per device in upstream (here: the global batch below, split over the mesh).
The encoder and global head start from DUSt3R as upstream does: convert DUSt3R first
(python -m fast3r_jax.convert DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth ckpt/dust3r_init --config large) and pass
--set init=ckpt/dust3r_init.

The layer stacks run unrolled and without remat: at 20 views of 512x384 on an H200 (jax 0.11.2, 2026-12-04) a step
takes 0.375-0.379 s (MFU 0.404-0.408; upstream's takes 1.014 s on the same GPU) and 42.2 GiB of program memory
that way, against 0.427-0.431 s and 61.4 GiB scanned, 0.469-0.478 s and 22.2 GiB scanned with remat
(benchmarks/train_step.py). On devices with less memory, or for more views, add
--set model.remat=true.
"""

import os

from fast3r_jax.config import DataConfig, OptimizerConfig, TrainConfig, large
from fast3r_jax.data.augment import BUCKETS


def mixture(root: str, views: int = 20) -> str:
    return " + ".join([
        f"80_000 @ co3d(root='{root}/co3d_all_seqs_per_category_subset_processed', split='train', "
        f"num_views={views}, window_degree_range=360, num_samples_per_window=100, mask_bg='rand')",
        f"80_000 @ scannetpp(root='{root}/scannetpp_processed', split='train', num_views={views}, "
        f"window_size={2 * views}, num_samples_per_window=5)",
        f"80_000 @ arkitscenes(root='{root}/arkitscenes_processed', split='train', num_views={views}, "
        f"window_size={5 * views}, num_samples_per_window=5)",
        f"80_000 @ habitat(root='{root}/habitat_processed', split='train', num_views={views}, size=1_000)",
        f"80_000 @ blendedmvs(root='{root}/datasets_raw/BlendedMVS', split='train', num_views={views}, "
        f"window_size={2 * views})",
        f"80_000 @ megadepth(root='{root}/megadepth_processed', split='train', num_views={views}, "
        f"window_size={2 * views}, num_samples_per_window=5)",
    ])


def get_config() -> TrainConfig:
    root = os.environ.get("FAST3R_DATA_ROOT", "data")
    steps = 100_000
    return TrainConfig(
        model=large().replace(scan_layers=False),
        optimizer=OptimizerConfig(lr=1e-4, min_lr=1e-6, warmup_steps=2_000, total_steps=steps),
        data=DataConfig(train=mixture(root), val=mixture(root, views=10).replace("80_000 @", "100 @"),
                        resolutions=BUCKETS, augment=True, aug_crop=None, batch_size=8, workers=8),
        steps=steps, dtype="bfloat16", layout="zero2", workdir="runs/large", log_every=50, val_every=5_000,
        ckpt_every=1_000,
    )
