"""The reports of `fast3r-jax evaluate`: summary tables, and the --out folder (metrics.json, <task>.csv, metrics.md,
TensorBoard scalars under tb/ with step = views per sample (0 for the keyframe setting), PNG plots), written as one
folder so that a new run never mixes with an old run's files."""

from __future__ import annotations

import csv
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fast3r_jax.evaluation import plots
from fast3r_jax.evaluation.protocols import (
    HEADS,
    POSE_METRICS,
    RECON_METRICS,
    SampleResult,
    aligned_camera_centres,
    mean_scores,
)
from fast3r_jax.io.files import atomic_folder
from fast3r_jax.train.tensorboard import SummaryWriter

Run = tuple[int | None, int | None, list[SampleResult]]  # (views, stride, results)


def setting_label(views: int | None, stride: int | None) -> int | str:
    """The 'views' entry of a run: its view count, or its keyframe stride."""
    return views if views is not None else f"1 in {stride}"


def file_tag(views: int | None, stride: int | None) -> str:
    return f"{views}views" if views is not None else f"kf{stride}"


def summary_tables(tasks: Sequence[str], runs: Sequence[Run]) -> dict[str, list[dict]]:
    """Per task, one row per run (and head): the scores averaged over the run's samples."""
    tables: dict[str, list[dict]] = {task: [] for task in tasks}
    for views, stride, results in runs:
        mean = mean_scores(results)
        label, count = setting_label(views, stride), len(results)
        if "pose" in tasks:
            tables["pose"].append({"views": label, "samples": count} | {k: mean[k] for k in POSE_METRICS})
        if "recon" in tasks:
            tables["recon"] += [{"views": label, "head": h, "samples": count} |
                                {k: mean[f"{h}/{k}"] for k in RECON_METRICS} for h in HEADS]
    return tables


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def text_table(rows: Sequence[dict]) -> str:
    columns = list(rows[0])
    cells = [columns] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells)


def markdown_table(rows: Sequence[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows])


def write_tensorboard(logdir: pathlib.Path, dataset: str, tables: dict[str, list[dict]]) -> None:
    """Scalars '<dataset>/pose/<metric>' and '<dataset>/recon_<head>/<metric>', step = views (0 for keyframes)."""
    writer = SummaryWriter(logdir)
    for task, rows in tables.items():
        for row in rows:
            prefix = f"{dataset}/{task}" + (f"_{row['head']}" if "head" in row else "")
            step = row["views"] if isinstance(row["views"], int) else 0
            writer.scalars({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, float)}, step)
    writer.close()


def write_plots(out: pathlib.Path, dataset: str, tasks: Sequence[str], runs: Sequence[Run]) -> None:
    for views, stride, results in runs:
        tag, label = file_tag(views, stride), f"{dataset}, {setting_label(views, stride)} views"
        if "pose" in tasks:
            rot, trans = np.concatenate([r.rot_err for r in results]), np.concatenate([r.trans_err for r in results])
            plots.pose_error_histograms(rot, trans, out / f"pose_errors_{tag}.png", f"{label}, {len(rot)} pairs")
            first = results[0]
            pred, gt = aligned_camera_centres(first.pred_c2w, first.gt_c2w)
            plots.camera_trajectory(pred, gt, out / f"trajectory_{tag}.png", f"{label}: {first.name}")
        if "recon" in tasks:
            series = {f"{h} {m}": [r.scores[f"{h}/{m}"] for r in results] for m in ("acc", "comp") for h in HEADS}
            plots.scene_bars([r.name for r in results], series, out / f"recon_scenes_{tag}.png", label,
                             "mean distance (GT units)")


def write_report(out: str | os.PathLike, settings: Mapping[str, Any], tasks: Sequence[str],
                 tables: dict[str, list[dict]], runs: Sequence[Run], *, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike] = ()) -> pathlib.Path:
    """Writes the --out folder of one evaluation (`settings['dataset']` names the dataset) atomically, replacing
    an older evaluation folder only with `overwrite` (see fast3r_jax.io.files)."""
    dataset = settings["dataset"]
    samples = [{"views": setting_label(v, s), "name": r.name, "num_views": r.num_views} | r.scores
               for v, s, results in runs for r in results]
    with atomic_folder(out, kind="evaluation", overwrite=overwrite, inputs=inputs) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(dict(settings) | {"tables": tables, "samples": samples},
                                                     indent=1))
        for task, rows in tables.items():
            with open(tmp / f"{task}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        (tmp / "metrics.md").write_text("".join(f"## {dataset} {task}\n\n{markdown_table(rows)}\n\n"
                                                for task, rows in tables.items()))
        write_tensorboard(tmp / "tb", dataset, tables)
        write_plots(tmp, dataset, tasks, runs)
    return pathlib.Path(out).absolute()
