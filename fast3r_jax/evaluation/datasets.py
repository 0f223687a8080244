"""The benchmarks `fast3r-jax evaluate` runs: each dataset's tasks and the reference's settings, and its samples."""

from __future__ import annotations

import dataclasses
import os

from fast3r_jax.data.eval_datasets import DTU, NRGBD, Co3dPoseEval, RealEstate10KPoses, SevenScenes
from fast3r_jax.data.synthetic import SyntheticScenes

DTU_IMAGES = 50  # the reference's keyframe stride for N views of a DTU scan is 50 // N


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A benchmark's tasks and the reference's settings for it."""

    tasks: tuple[str, ...]
    resolution: tuple[int, int]  # (W, H)
    views: tuple[int, ...] | None  # view counts; None: the keyframes of whole sequences
    pose_solver: str | None  # None: no pose task
    scenes: int | None  # samples evaluated; None: all
    keyframe_stride: int | None = None


DATASETS = {
    "synthetic": DatasetSpec(("pose", "recon"), (128, 96), (6,), "procrustes", 16),
    "co3d": DatasetSpec(("pose",), (512, 384), (3, 5, 10, 20), "pnp", 100),
    "re10k": DatasetSpec(("pose",), (512, 288), (10,), "pnp", None),
    "7scenes": DatasetSpec(("recon",), (512, 512), None, None, None, keyframe_stride=20),
    "nrgbd": DatasetSpec(("recon",), (512, 512), None, None, None, keyframe_stride=40),
    "dtu": DatasetSpec(("recon",), (512, 512), None, None, None, keyframe_stride=5),
}


def open_dataset(dataset: str, data_root: str | os.PathLike | None, views: int | None, stride: int | None, *,
                 resolution: tuple[int, int] | None = None, scenes: int | None = None, seed: int = 0,
                 sequences: str | os.PathLike | None = None):
    """The samples of one run of `dataset`: `views` per sample, or (reconstruction datasets) every `stride`-th
    frame; resolution and scenes default to the dataset's (DATASETS)."""
    spec = DATASETS[dataset]
    resolution = resolution or spec.resolution
    scenes = scenes or spec.scenes
    if dataset == "synthetic":
        return SyntheticScenes(scenes, views, resolution, seed=seed, split="test")
    if dataset == "co3d":
        return Co3dPoseEval(data_root, views, resolution=resolution, num_samples=scenes)
    if dataset == "re10k":
        return RealEstate10KPoses(data_root, views, resolution=resolution, seed=seed, sequences=sequences)
    if dataset == "dtu":
        return DTU(data_root, resolution=resolution, kf_every=stride if views is None else DTU_IMAGES // views)
    frames = {"full_video": True, "kf_every": stride} if views is None else {"full_video": False, "num_frames": views}
    reader = SevenScenes if dataset == "7scenes" else NRGBD
    return reader(data_root, resolution=resolution, seed=seed, **frames)
