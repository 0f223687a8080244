"""Training beside upstream PyTorch Fast3R: the same steps from the same weights on the same batches, side by side.

    python benchmarks/train_parity.py --torch-reference .torchref --config tiny --views 2 --size 64x48 --steps 50 \
        --json parity.json --markdown parity.md

Both frameworks start from one state dict (upstream's seeded random init, `--seed`, or --init-weights, an .npz of
upstream tensors; ours converted with `params_from_torch`) and take --steps optimizer steps on the same batches:
synthetic scenes (fast3r_jax.data.synthetic, --scenes of them, cycled) written once to DIR/data.npz and read by both.
The criterion is upstream's training one, ConfLossMultiviewV2(Regr3DMultiviewV4(L21, avg_dis), alpha=0.2) on the
global and local heads; the optimizer AdamW (betas (0.9, 0.95), weight decay 0.05 on every parameter, no clipping),
and both sides take the learning rate of our schedule at every step (linear warm-up over --warmup-steps to --lr,
cosine to 1e-6 at --steps). Upstream's pl_bolts LinearWarmupCosineAnnealingLR differs only in the warm-up, which
divides by (warmup - 1) and so reaches the peak one step earlier; one schedule for both keeps that out of the
comparison.

Image ids: our train step draws each step's ids from its state's seed (fast3r_jax.train.step: the key of --seed
folded with the step, then `sample_image_ids`); upstream draws its own with torch.randperm. Here the ids are an
input: the ids our step draws with seed S are stored in the data file and upstream's fusion transformer is given
them (torch_reference.feed_image_ids). Runs:
  float32            upstream float32 vs ours float32 (matmuls at full float32 precision), ids of --seed;
  bfloat16           upstream under bf16 autocast vs ours with bf16 compute on float32 master weights, ids of --seed;
  bfloat16_spread    upstream bf16 again with the ids of --seed + 1: the same weights, batches and learning rates,
                     only the image ids differ (dropout rates are 0, so nothing else in a step is random). Its
                     difference from the first upstream bf16 run is the spread that a different seed gives.
Per step: loss, every loss term, gradient norm (global L2 norm before the update) and learning rate, with the
relative difference |ours - upstream| / |upstream|; written as JSON and as Markdown tables.

Upstream runs first, in its own process (benchmarks/torch_reference.py --train-parity DIR, which says how upstream is
loaded and what is patched), so each framework has the device to itself; --torch-python picks its interpreter. On
CUDA upstream's attention runs under its own bf16 autocast even in float32 (its Attention.forward), so the float32
comparison is exact only on the CPU (--torch-device cpu).

--golden FILE writes the inputs, upstream's float32 steps and their provenance for tests/test_train_parity.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shlex
import sys
import tempfile
from typing import Any

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # a plain checkout: `python benchmarks/train_parity.py` from the repo root
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch_reference  # noqa: E402
from torch_reference import ALPHA, SCENE_KEYS, scene_batch, upstream_config  # noqa: E402

from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax.config import OptimizerConfig  # noqa: E402
from fast3r_jax.convert.table import params_from_torch  # noqa: E402
from fast3r_jax.data.synthetic import SyntheticScenes  # noqa: E402
from fast3r_jax.io.images import normalize  # noqa: E402
from fast3r_jax.model.fast3r import DTYPES  # noqa: E402
from fast3r_jax.model.image_index_embedding import sample_image_ids  # noqa: E402
from fast3r_jax.sharding import make_mesh  # noqa: E402
from fast3r_jax.train import step as training  # noqa: E402
from fast3r_jax.train.optimizer import learning_rate, make_optimizer  # noqa: E402

RUNS = (("float32", "float32", "a"), ("bfloat16", "bfloat16", "a"), ("bfloat16_spread", "bfloat16", "b"))


def make_data(cfg: config_lib.Fast3RConfig, num_views: int, width: int, height: int, batch: int, steps: int,
              scenes: int, seed: int, data_seed: int) -> dict[str, np.ndarray]:
    """The data file: `scenes` synthetic scenes (S, V, ...) in the loader's layout, the scene of every sample
    (`order`, (steps, B)), and per id set the image ids (steps, B, V) our step draws with seed (a) and seed + 1 (b)."""
    if width < height:
        raise ValueError(f"--size must be landscape (W >= H), got {width}x{height}")
    source = SyntheticScenes(scenes, num_views, resolution=(width, height), seed=data_seed)
    views = [source[i] for i in range(scenes)]
    data = {
        "img": np.stack([[normalize(v["img"]) for v in s] for s in views]),  # (S, V, 3, H, W)
        "true_shape": np.full((scenes, num_views, 2), (height, width), np.int32),
        "pts3d": np.stack([[v["pts3d"] for v in s] for s in views]).astype(np.float32),  # (S, V, H, W, 3)
        "valid_mask": np.stack([[v["valid_mask"] for v in s] for s in views]).astype(bool),  # (S, V, H, W)
        "camera_pose": np.stack([[v["camera_pose"] for v in s] for s in views]).astype(np.float32),  # (S, V, 4, 4)
        "order": (np.arange(steps * batch) % scenes).reshape(steps, batch),
    }
    for name, ids_seed in (("a", seed), ("b", seed + 1)):
        data[f"ids/{name}"] = step_image_ids(ids_seed, steps, batch, num_views, cfg.fusion.num_image_ids)
    return data


def step_image_ids(seed: int, steps: int, batch: int, num_views: int, num_ids: int) -> np.ndarray:
    """(steps, B, V) int32: the ids our train step draws at each step from a state made with `seed`."""
    key = jax.random.key(seed)
    return np.stack([np.asarray(sample_image_ids(jax.random.fold_in(key, step), batch, num_views, num_ids))
                     for step in range(steps)])


def run_ours(cfg: config_lib.Fast3RConfig, state_dict: dict[str, np.ndarray], data: dict[str, np.ndarray],
             opt: OptimizerConfig, dtype: str, seed: int, steps: int) -> list[dict[str, float]]:
    """Our train step (fast3r_jax.train.step, one device) from `state_dict` over the data file's first `steps`
    batches; per step the metrics it reports (loss, grad_norm, lr and the loss terms). float32 runs with full
    float32 matmul precision."""
    mesh = make_mesh(1, 1)
    tx = make_optimizer(opt)
    step_fn, shardings = training.make_train_step(cfg, tx, mesh, "replicated", dtype=DTYPES[dtype],
                                                  schedule=learning_rate(opt))
    state = jax.device_put(training.init_state(params_from_torch(state_dict, cfg), tx, seed), shardings)
    records = []
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        for step in range(steps):
            batch = scene_batch(data, step)
            state, metrics = step_fn(state, training.device_batch(batch, mesh), training.orientations(batch))
            metrics = {k: float(v) for k, v in metrics.items()}
            if not metrics.pop("finite"):
                raise FloatingPointError(f"{dtype}: non-finite loss or gradient at step {step}")
            records.append(metrics)
    return records


def relative(a: float, b: float) -> float:
    """|a - b| / |b| (b the reference)."""
    return abs(a - b) / abs(b) if b else abs(a - b)


def compare(ours: list[dict], theirs: list[dict]) -> list[dict[str, Any]]:
    """Per step: both values and the relative difference of loss, grad_norm and every loss term upstream logs."""
    rows = []
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        keys = ["loss", "grad_norm"] + sorted(k for k in b if k not in ("loss", "grad_norm"))
        row: dict[str, Any] = dict(step=step, lr=a.get("lr"))
        for key in keys:
            row[key] = dict(ours=a[key], upstream=b[key], rel=relative(a[key], b[key]))
        terms = [k for k in keys if k not in ("loss", "grad_norm")]
        worst = max(terms, key=lambda k: row[k]["rel"])
        row["worst_term"] = dict(name=worst, rel=row[worst]["rel"])
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    return {f"max_rel_{k}": max(r[k]["rel"] for r in rows) for k in ("loss", "grad_norm")} | {
        "max_rel_term": max(r["worst_term"]["rel"] for r in rows),
        "rel_loss_first": rows[0]["loss"]["rel"], "rel_loss_last": rows[-1]["loss"]["rel"]}


def markdown(title: str, rows: list[dict], spread: list[dict] | None = None) -> str:
    """One table: step, lr, loss and grad norm on both sides with relative differences, the worst loss term; with
    `spread`, the relative difference between the two upstream runs beside each."""
    head = "| step | lr | loss upstream | loss ours | rel | grad norm upstream | grad norm ours | rel | worst term (rel) |"
    rule = "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    if spread:
        head += " spread loss | spread grad norm |"
        rule += "---:|---:|"
    lines = [f"### {title}", "", head, rule]
    for i, r in enumerate(rows):
        line = (f"| {r['step']} | {r['lr']:.3g} | {r['loss']['upstream']:.6f} | {r['loss']['ours']:.6f} | "
                f"{r['loss']['rel']:.1e} | {r['grad_norm']['upstream']:.5f} | {r['grad_norm']['ours']:.5f} | "
                f"{r['grad_norm']['rel']:.1e} | {r['worst_term']['name']} ({r['worst_term']['rel']:.1e}) |")
        if spread:
            line += f" {spread[i]['loss']['rel']:.1e} | {spread[i]['grad_norm']['rel']:.1e} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def run_upstream(args, run_dir: pathlib.Path, plan: dict) -> dict:
    """benchmarks/torch_reference.py --train-parity run_dir in its own process; returns its JSON."""
    (run_dir / "plan.json").write_text(json.dumps(plan, indent=1))
    out = run_dir / "upstream.json"
    cmd = [args.torch_python, str(HERE / "torch_reference.py"), "--root", str(args.torch_reference), "--config",
           args.config, "--views", "--train-parity", str(run_dir), "--json", str(out)]
    if args.torch_device:
        cmd += ["--device", args.torch_device]
    return torch_reference.run_child(cmd, out)


def write_golden(path: pathlib.Path, data: dict, upstream: dict, plan: dict, argv: list[str], measured: dict) -> None:
    """Inputs, upstream's float32 steps and their provenance, for the CPU test."""
    steps = upstream["train_parity"]["runs"]["float32"]["steps"]
    arrays = {k: data[k] for k in SCENE_KEYS + ("order", "ids/a")}
    for key in steps[0]:
        arrays[f"upstream/{key}"] = np.asarray([s[key] for s in steps], np.float64)
    arrays["upstream/lr"] = np.asarray(plan["lrs"], np.float64)  # the learning rate upstream took at each step
    provenance = dict(
        made=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        command="python benchmarks/train_parity.py " + shlex.join(argv),
        upstream_commit=upstream["train_parity"]["commit"], upstream_env=upstream["train_parity"]["env"],
        upstream_notes=upstream["notes"], init_weights=plan["init_weights_description"], seed=plan["seed"],
        config=plan["config"], upstream_config=plan["upstream_config"], optimizer=plan["optimizer"],
        measured_float32=measured)
    np.savez_compressed(path, provenance=np.asarray(json.dumps(provenance)), **arrays)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-reference", type=pathlib.Path, required=True,
                        help="local checkout of facebookresearch/fast3r")
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch for upstream's run")
    parser.add_argument("--torch-device", default=None, help="upstream's torch device (default: cuda if any)")
    parser.add_argument("--config", default="tiny", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--size", default="64x48", help="WxH of every view (landscape)")
    parser.add_argument("--batch", type=int, default=1, help="samples per step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scenes", type=int, default=10, help="distinct synthetic scenes, cycled")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="upstream init and image ids (the spread run: seed + 1)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--init-weights", type=pathlib.Path, default=None,
                        help=".npz of upstream tensors to start from (default: upstream's init, seeded)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="keep data and upstream's output here")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--markdown", type=pathlib.Path, default=None)
    parser.add_argument("--golden", type=pathlib.Path, default=None, help="write the CPU test's golden here")
    args = parser.parse_args(argv)
    if not (args.torch_reference / "fast3r" / "models" / "fast3r.py").is_file():
        parser.error(f"--torch-reference: {args.torch_reference} is not a checkout of facebookresearch/fast3r")
    if args.init_weights is not None and not args.init_weights.is_file():
        parser.error(f"--init-weights: {args.init_weights} does not exist")
    if args.golden and "float32" not in args.dtypes:
        parser.error("--golden needs the float32 run")

    cfg = getattr(config_lib, args.config)()
    width, height = (int(x) for x in args.size.split("x"))
    opt = OptimizerConfig(lr=args.lr, warmup_steps=args.warmup_steps, total_steps=args.steps)
    schedule = learning_rate(opt)
    runs = [r for r in RUNS if r[1] in args.dtypes]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.workdir or pathlib.Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        data = make_data(cfg, args.views, width, height, args.batch, args.steps, args.scenes, args.seed,
                         args.data_seed)
        np.savez(run_dir / "data.npz", **data)
        plan = dict(config=cfg.to_dict(), upstream_config=upstream_config(cfg, "flash_attention"), seed=args.seed,
                    alpha=ALPHA, init_weights=str(args.init_weights.resolve()) if args.init_weights else None,
                    init_weights_description=str(args.init_weights) if args.init_weights
                    else f"upstream's init, torch.manual_seed({args.seed})",
                    optimizer=dict(lr=opt.lr, min_lr=opt.min_lr, warmup_steps=opt.warmup_steps,
                                   total_steps=opt.total_steps, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay),
                    lrs=[float(schedule(s)) for s in range(args.steps)],
                    runs=[dict(name=name, dtype=dtype, ids=ids) for name, dtype, ids in runs])
        upstream = run_upstream(args, run_dir, plan)
        weights = args.init_weights or run_dir / "state_dict.npz"
        with np.load(weights) as z:
            state_dict = {k: z[k] for k in z.files}
    theirs = upstream["train_parity"]["runs"]
    result: dict[str, Any] = dict(
        env=dict(jax=jax.__version__, device=jax.devices()[0].device_kind, upstream=upstream["train_parity"]["env"],
                 upstream_commit=upstream["train_parity"]["commit"]),
        notes=upstream["notes"], settings=dict(vars(args), torch_reference=str(args.torch_reference)), plan=plan)
    tables = []
    for name, dtype, _ in runs:
        if name == "bfloat16_spread" or "skipped" in theirs[name]:
            continue
        print(f"ours {dtype}: {args.steps} steps", flush=True)
        rows = compare(run_ours(cfg, state_dict, data, opt, dtype, args.seed, args.steps), theirs[name]["steps"])
        entry: dict[str, Any] = dict(rows=rows, summary=summary(rows))
        spread = None
        if dtype == "bfloat16" and "steps" in theirs.get("bfloat16_spread", {}):
            spread = compare(theirs["bfloat16_spread"]["steps"], theirs[name]["steps"])
            entry["spread"] = dict(rows=spread, summary=summary(spread))
        result[name] = entry
        tables.append(markdown(f"{dtype}: ours vs upstream" + (" (spread: upstream, other image ids)" if spread
                                                                else ""), rows, spread))
    print()
    for name in ("float32", "bfloat16"):
        if name in result:
            line = ", ".join(f"{k} {v:.2e}" for k, v in result[name]["summary"].items())
            if "spread" in result[name]:
                line += "; spread: " + ", ".join(f"{k} {v:.2e}" for k, v in result[name]["spread"]["summary"].items())
            print(f"{name}: {line}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))  # paths as strings
    if args.markdown:
        args.markdown.write_text("\n".join(tables))
    if args.golden:
        write_golden(args.golden, data, upstream, plan, argv, result["float32"]["summary"])


if __name__ == "__main__":
    main()
