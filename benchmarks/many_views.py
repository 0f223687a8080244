"""Accuracy as the view count grows: image-id table rows against interpolated (fractional) ids.

    python benchmarks/many_views.py --views 8 64 256 1000 1500 2000 --json many_views.json

One synthetic scene (split 'test') rendered from N cameras on its orbit, 6-16 degrees apart, so that more views also
cover more of the room (up to several turns around it), or with --span S along the same stretch of that path at every
N (S steps of 6-16 degrees, the path of S + 1 views: --span 7 keeps the coverage of 8 views), so that N changes only
the view count and the spacing; the model (default: the built-in one) runs
on all N views in one forward through `Engine`. Up to 1000 views both id schemes run: 'table' draws distinct rows of
the 1000-row sinusoidal table as upstream does at inference, 'interpolated' spreads fractional ids evenly over the
table's range (position interpolation, the only option past 1000 views). Reported per (N, scheme): RRA/RTA@15 and
mAA(30) of the Procrustes cameras over all view pairs, and the point error of the global pointmap (mean distance
to the ground truth after a confidence-weighted similarity, over the ground truth's mean distance to its centroid).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

from fast3r_jax import load_pretrained
from fast3r_jax.data.synthetic import SyntheticScenes
from fast3r_jax.geometry import metrics
from fast3r_jax.geometry.cameras import estimate_cameras
from fast3r_jax.geometry.transforms import align_points, inverse_rigid
from fast3r_jax.inference.engine import Engine, make_image_ids
from fast3r_jax.io.images import normalize

BUILTIN = pathlib.Path(__file__).parent.parent / "fast3r_jax" / "assets" / "builtin"


def point_error(pts: np.ndarray, conf: np.ndarray, gt: np.ndarray, valid: np.ndarray, max_points: int = 200_000,
                seed: int = 0) -> float:
    """Scale-free error of predicted points (P, 3) against ground truth (P, 3) on valid pixels (subsampled)."""
    index = np.flatnonzero(valid)
    index = np.random.default_rng(seed).choice(index, min(max_points, index.size), replace=False)
    src, dst = pts[index], gt[index]
    aligned = align_points(src, dst, conf[index])
    spread = np.linalg.norm(dst - dst.mean(0), axis=-1).mean()
    return float(np.linalg.norm(aligned - dst, axis=-1).mean() / spread)


def evaluate(engine: Engine, views: list[dict], ids: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    pred = jax.device_get(engine([{"img": normalize(v["img"])[None]} for v in views], ids))
    seconds = time.perf_counter() - start
    gt_c2w = np.stack([v["camera_pose"] for v in views]).astype(np.float32)  # (V, 4, 4)
    pred_c2w = estimate_cameras(pred, "procrustes", min_conf_percentile=0.0).c2w.astype(np.float32)
    rot, trans = (np.asarray(e) for e in metrics.relative_pose_errors(pred_c2w, gt_c2w))
    to_first = inverse_rigid(gt_c2w[0].astype(np.float64))  # predictions live in view 0's camera frame
    gt = np.concatenate([v["pts3d"].reshape(-1, 3) @ to_first[:3, :3].T + to_first[:3, 3] for v in views])
    pts = np.concatenate([p["pts3d_in_other_view"].reshape(-1, 3) for p in pred])
    conf = np.concatenate([p["conf"].reshape(-1) for p in pred])
    valid = np.concatenate([v["valid_mask"].reshape(-1) for v in views])
    return {"RRA@15": float(np.mean(rot < 15)), "RTA@15": float(np.mean(trans < 15)),
            "mAA(30)": float(metrics.mean_average_accuracy(rot, trans)),
            "rot_err_median": float(np.median(rot)), "point_err": point_error(pts, conf, gt, valid),
            "forward_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=pathlib.Path, default=BUILTIN)
    parser.add_argument("--views", type=int, nargs="+", default=[8, 64, 256, 1000, 1500, 2000])
    parser.add_argument("--resolution", default="128x96", help="WxH")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--scene", type=int, default=0, help="seed of the synthetic test scene")
    parser.add_argument("--span", type=float, default=None,
                        help="fixed coverage: every N spread over this many steps of the camera path (default: N - 1)")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if args.span is not None and not 0 <= args.span < float("inf"):
        parser.error(f"--span must be a number >= 0, got {args.span}")

    config, params = load_pretrained(args.checkpoint)
    engine = Engine(config, params, args.dtype, encoder_chunk=256, head_chunk=64)
    width, height = (int(x) for x in args.resolution.split("x"))
    num_ids = config.fusion.num_image_ids
    env = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, checkpoint=str(args.checkpoint),
               resolution=args.resolution, dtype=args.dtype, scene=args.scene, span=args.span)
    print(json.dumps(env), flush=True)
    print(f"{'N':>5} {'ids':>12} {'RRA@15':>7} {'RTA@15':>7} {'mAA30':>6} {'rot med':>8} {'pt err':>7} {'s':>7}",
          flush=True)
    rows = []
    for n in args.views:
        views = SyntheticScenes(1, n, (width, height), seed=args.scene, split="test", span=args.span)[0]
        for scheme in ("table", "interpolated"):
            if scheme == "table" and n > num_ids:
                continue
            ids = make_image_ids(n, "random", seed=0, num_ids=num_ids, interpolate=scheme == "interpolated")
            row = dict(views=n, ids=scheme) | evaluate(engine, views, ids)
            rows.append(row)
            print(f"{n:>5} {scheme:>12} {row['RRA@15']:>7.3f} {row['RTA@15']:>7.3f} {row['mAA(30)']:>6.3f} "
                  f"{row['rot_err_median']:>8.2f} {row['point_err']:>7.3f} {row['forward_s']:>7.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, rows=rows), indent=1))


if __name__ == "__main__":
    main()
