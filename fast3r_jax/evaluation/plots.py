"""PNG figures of evaluation results, drawn with matplotlib's Agg canvas (no display, no pyplot global state)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_THRESHOLDS_DEG = (5, 15, 30)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")


def pose_error_histograms(rot_err: np.ndarray, trans_err: np.ndarray, path: str | os.PathLike, title: str) -> None:
    """Side-by-side histograms of relative rotation and translation-direction errors (P,) in degrees, with the
    RRA/RTA thresholds marked."""
    fig = _figure(10, 3.8)
    axes = fig.subplots(1, 2)
    for ax, errors, name, limit in ((axes[0], rot_err, "rotation", 180), (axes[1], trans_err, "translation", 90)):
        ax.hist(np.clip(errors, 0, limit), bins=np.linspace(0, limit, 37), color="tab:blue", edgecolor="white")
        for tau in _THRESHOLDS_DEG:
            ax.axvline(tau, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xlim(0, limit)
        ax.set_xlabel(f"relative {name} error (degrees)")
        ax.set_ylabel("camera pairs")
        ax.set_title(f"{name}: median {np.median(errors):.1f}°")
    fig.suptitle(title)
    _save(fig, path)


def _principal_plane(points: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal basis of the plane of largest spread of (N, 3) points."""
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=True)
    return vt[:2].T


def camera_trajectory(pred_centres: np.ndarray, gt_centres: np.ndarray, path: str | os.PathLike, title: str) -> None:
    """Top-down view of predicted and ground-truth camera centres (V, 3), already in one frame: both projected onto
    the plane of largest spread of the ground truth, with each predicted camera joined to its true position."""
    basis = _principal_plane(gt_centres)
    origin = gt_centres.mean(axis=0)
    gt, pred = (gt_centres - origin) @ basis, (pred_centres - origin) @ basis  # (V, 2) each
    fig = _figure(5.5, 5.5)
    ax = fig.subplots()
    for a, b in zip(gt, pred):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.6", linewidth=0.8)
    ax.plot(gt[:, 0], gt[:, 1], "o-", color="tab:green", label="ground truth")
    ax.plot(pred[:, 0], pred[:, 1], "s--", color="tab:orange", label="predicted (similarity-aligned)")
    ax.plot(*gt[0], "k*", markersize=12, label="view 0")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title)
    _save(fig, path)


def scene_bars(names: Sequence[str], series: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str,
               ylabel: str) -> None:
    """Grouped bars: one group per scene name, one bar per series (label -> one value per scene)."""
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig = _figure(min(16.0, max(6.0, 0.3 * len(names) * len(series) + 2)), 4.2)
    ax = fig.subplots()
    for k, (label, values) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    ax.set_title(title)
    _save(fig, path)
