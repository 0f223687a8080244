"""Inference speed and memory of Fast3R in JAX, optionally beside upstream PyTorch Fast3R, and their output difference.

    python benchmarks/inference.py --config large --views 2 8 32 --size 512x384 --dtype bfloat16 --json out.json
    python benchmarks/inference.py --config large --views 2 8 32 64 128 --size 512x384 --dtype bfloat16 \
        --torch-reference .torchref --compare --json out.json

Random weights (timing does not depend on them). Each timing is the median over --repeats runs after one warm-up
call, with block_until_ready; compile time is reported separately. FLOPs come from the analytic count
(fast3r_jax.model.flops: XLA's cost analysis counts a scanned layer once and cannot see into cuDNN attention); peak
memory from the device's allocator statistics (GPU/TPU). An out-of-memory view count is recorded and skipped.

--torch-reference ROOT (a local checkout of facebookresearch/fast3r) also times upstream's PyTorch model on the same
device, view counts, image size and dtype (bf16 autocast; its flash-attention setting, --torch-attention), in a
separate process started before JAX touches the device (benchmarks/torch_reference.py says how upstream is loaded and
what is patched there), and prints both times, the JAX/PyTorch time ratio and the largest view count each fitted.
--compare runs both implementations on the same inputs with the same weights (upstream's seeded random weights, or
--torch-checkpoint / --checkpoint) at --compare-views views, in float32 and bfloat16, and prints max |jax - torch|
and max |jax - torch| / max |torch| per output. torch is imported only in that process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # a plain checkout: `python benchmarks/inference.py` from the repo root
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from timing import time_calls  # noqa: E402  (benchmarks/timing.py, beside this script)

from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax.convert.table import params_from_torch  # noqa: E402
from fast3r_jax.inference.predict import predict  # noqa: E402
from fast3r_jax.model.attention import AttentionImpl  # noqa: E402
from fast3r_jax.model.fast3r import DTYPES, OUTPUT_KEYS, View  # noqa: E402
from fast3r_jax.model.flops import forward_flops  # noqa: E402
from fast3r_jax.model.params import build_model, init_params  # noqa: E402
from fast3r_jax.sharding import resolve_attention  # noqa: E402

TORCH_ATTENTION = ("flash_attention", "pytorch_auto", "pytorch_naive")  # upstream's attn_implementation values


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def whole_forward(model, num_views: int, height: int, width: int, attention: AttentionImpl):
    """Random landscape views and the jitted whole-model forward over them: (forward, state, imgs, true_shape,
    ids), called as forward(state, imgs)."""
    graphdef, state = nnx.split(model)
    imgs = jax.random.uniform(jax.random.key(0), (num_views, 3, height, width), model.dtype, -1, 1)
    true_shape = jnp.tile(jnp.asarray([[height, width]], jnp.int32), (num_views, 1))
    ids = jnp.arange(num_views, dtype=jnp.int32)[None]

    @jax.jit
    def forward(state, imgs):
        views = [View(imgs[i:i + 1], true_shape[i:i + 1]) for i in range(num_views)]
        return nnx.merge(graphdef, state)(views, ids, attention=attention)

    return forward, state, imgs, true_shape, ids


def bench(model, num_views: int, height: int, width: int, repeats: int) -> dict:
    graphdef = nnx.graphdef(model)
    attention = resolve_attention(model.cfg.attention, model.dtype)
    forward, state, imgs, true_shape, ids = whole_forward(model, num_views, height, width, attention)

    @jax.jit
    def encode(state, imgs):
        return nnx.merge(graphdef, state).encode(imgs, true_shape, "landscape", attention=attention)  # (V, n, D)

    @jax.jit
    def fuse(state, tokens):
        n = tokens.shape[1]
        return nnx.merge(graphdef, state).fuse(tokens.reshape(1, -1, tokens.shape[-1]), (n,) * num_views, ids,
                                               attention=attention)  # 4 x (1, V*n, C_k)

    @jax.jit
    def heads(state, hooks):
        per_view = [h.reshape(num_views, -1, h.shape[-1]) for h in hooks]  # 4 x (V, n, C_k)
        return nnx.merge(graphdef, state).decode(per_view, (height, width), "landscape", true_shape)

    row = dict(views=num_views, height=height, width=width)
    row["compile_s"], row["forward_s"] = time_calls(forward, state, imgs, repeats=repeats)
    row["peak_bytes"] = _peak_bytes()
    row["flops"] = forward_flops(model.cfg, [(height, width)] * num_views)
    tokens = encode(state, imgs)
    hooks = fuse(state, tokens)
    row["encoder_s"] = time_calls(encode, state, imgs, repeats=repeats)[1]
    row["fusion_s"] = time_calls(fuse, state, tokens, repeats=repeats)[1]
    row["heads_s"] = time_calls(heads, state, hooks, repeats=repeats)[1]
    row["tflops_per_s"] = row["flops"] / row["forward_s"] / 1e12
    return row


def _oom(err: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()


def run_jax(args, height: int, width: int) -> tuple[dict, list[dict]]:
    cfg = getattr(config_lib, args.config)().replace(attention=args.attention)
    model = build_model(cfg, init_params(cfg), DTYPES[args.dtype])
    env = dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(), jax=jax.__version__,
               flax=flax.__version__, python=platform.python_version(), dtype=args.dtype,
               attention=resolve_attention(cfg.attention, DTYPES[args.dtype]).kernel)
    print(json.dumps(env), flush=True)
    rows = []
    print(f"{'N':>5} {'forward s':>10} {'compile s':>10} {'enc s':>8} {'fusion s':>9} {'heads s':>8} "
          f"{'TFLOP/s':>8} {'peak GiB':>9}", flush=True)
    for n in args.views:
        try:
            row = bench(model, n, height, width, args.repeats)
        except Exception as err:  # out of memory is recorded and the sweep goes on; anything else is re-raised
            if not _oom(err):
                raise
            print(f"{n:>5} out of memory", flush=True)
            rows.append(dict(views=n, height=height, width=width, oom=True))
            continue
        rows.append(row)
        peak = row["peak_bytes"] / 2**30 if row["peak_bytes"] else float("nan")
        print(f"{n:>5} {row['forward_s']:>10.4f} {row['compile_s']:>10.2f} {row['encoder_s']:>8.4f} "
              f"{row['fusion_s']:>9.4f} {row['heads_s']:>8.4f} {row['tflops_per_s']:>8.1f} "
              f"{peak:>9.2f}", flush=True)
    return env, rows


def run_torch_reference(args, compare_dir: str | None) -> dict:
    """Runs benchmarks/torch_reference.py in its own process (before JAX uses the device); returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "torch.json"
        cmd = [sys.executable, str(HERE / "torch_reference.py"), "--root", str(args.torch_reference),
               "--config", args.config, "--size", args.size, "--dtype", args.dtype, "--attention",
               args.torch_attention, "--repeats", str(args.repeats), "--json", str(out),
               "--views", *([] if args.no_timing else [str(n) for n in args.views])]
        if compare_dir:
            cmd += ["--compare-dir", compare_dir, "--compare-views", str(args.compare_views), "--compare-dtypes",
                    *args.compare_dtypes, "--fp32-device", args.torch_fp32_device]
            if args.torch_checkpoint:
                cmd += ["--torch-checkpoint", str(args.torch_checkpoint)]
            elif args.checkpoint:
                cmd += ["--checkpoint", str(args.checkpoint)]
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
        print("upstream PyTorch run: " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode or not out.is_file():
            print(f"upstream PyTorch run failed (exit status {proc.returncode})", flush=True)
            return dict(error=f"exit status {proc.returncode}")
        return json.loads(out.read_text())


def print_side_by_side(jax_rows: list[dict], torch_result: dict, cfg: config_lib.Fast3RConfig) -> list[dict]:
    """One row per view count: both times, the JAX/PyTorch time ratio, the split, TFLOP/s and peak memory."""
    theirs = {r["views"]: r for r in torch_result.get("rows", [])}
    ours = {r["views"]: r for r in jax_rows}
    env = torch_result.get("env", {})
    print(f"\nfast3r-jax vs upstream PyTorch (torch {env.get('torch')}, attn_implementation "
          f"{env.get('attn_implementation')}, flash attention kernels used: {env.get('flash_attention_used')}, "
          f"RoPE {env.get('rope', '?').rsplit('.', 1)[-1]})")
    print(f"{'N':>5} {'jax s':>8} {'torch s':>8} {'jax/torch':>9} {'jax enc/fusion/heads s':>23} "
          f"{'torch enc/fusion/heads s':>25} {'jax TF/s':>8} {'torch TF/s':>10} {'jax GiB':>8} {'torch GiB':>9}")
    merged = []
    for n in sorted(set(ours) | set(theirs)):
        a, b = ours.get(n, {}), theirs.get(n, {})
        ok_a, ok_b = "forward_s" in a, "forward_s" in b
        flops = forward_flops(cfg, [(a.get("height") or b["height"], a.get("width") or b["width"])] * n)
        row = dict(views=n, jax_s=a.get("forward_s"), torch_s=b.get("forward_s"),
                   ratio=a["forward_s"] / b["forward_s"] if ok_a and ok_b else None,
                   jax_oom=bool(a.get("oom")), torch_oom=bool(b.get("oom")),
                   torch_tflops_per_s=flops / b["forward_s"] / 1e12 if ok_b else None)
        merged.append(row)

        def split(r):
            return "/".join(f"{r[k]:.3f}" for k in ("encoder_s", "fusion_s", "heads_s")) if "encoder_s" in r else "-"

        def num(x, fmt):
            return format(x, fmt) if x is not None else "-"

        def gib(r):
            return f"{r['peak_bytes'] / 2**30:.2f}" if r.get("peak_bytes") else "-"

        print(f"{n:>5} {('OOM' if a.get('oom') else num(a.get('forward_s'), '.4f')):>8} "
              f"{('OOM' if b.get('oom') else num(b.get('forward_s'), '.4f')):>8} {num(row['ratio'], '.2f'):>9} "
              f"{split(a):>23} {split(b):>25} {num(a.get('tflops_per_s'), '.1f'):>8} "
              f"{num(row['torch_tflops_per_s'], '.1f'):>10} {gib(a):>8} {gib(b):>9}")
    fits = [r["views"] for r in jax_rows if "forward_s" in r]
    print(f"largest N that fitted: fast3r-jax {max(fits) if fits else None}, "
          f"upstream {torch_result.get('largest_views_fitted')} (of {sorted(set(ours) | set(theirs))})")
    return merged


def _errors(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], views: int) -> dict[str, dict[str, float]]:
    """Per output, over all views: max |ours - ref| and max |ours - ref| / max |ref|."""
    out = {}
    for key in OUTPUT_KEYS:
        diff = max(float(np.abs(ours[f"v{i}/{key}"].astype(np.float64) - ref[f"v{i}/{key}"]).max())
                   for i in range(views))
        scale = max(float(np.abs(ref[f"v{i}/{key}"].astype(np.float64)).max()) for i in range(views))
        out[key] = dict(max_abs=diff, max_rel=diff / scale if scale else math.inf)
    return out


def _compare_params(args, cfg: config_lib.Fast3RConfig, out_dir: pathlib.Path) -> tuple[dict, str]:
    """Our parameters for the weights upstream ran with, and where they came from."""
    if args.checkpoint:
        from fast3r_jax.checkpoint import load_pretrained

        loaded_cfg, params = load_pretrained(args.checkpoint)
        neutral = {"attention": "auto", "remat": False, "remat_policy": "full"}  # no effect on outputs
        if loaded_cfg.replace(**neutral) != cfg.replace(**neutral):
            raise ValueError(f"{args.checkpoint}'s config differs from the one upstream ran with")
        return params, f"converted checkpoint {args.checkpoint}"
    if args.torch_checkpoint:
        from fast3r_jax.convert.readers import load_state_dict

        state_dict, _ = load_state_dict(args.torch_checkpoint)
    else:
        with np.load(out_dir / "state_dict.npz") as z:
            state_dict = {k: z[k] for k in z.files}
    return params_from_torch(state_dict, cfg), "upstream's state dict converted with params_from_torch"


def run_compare(args, out_dir: pathlib.Path) -> dict:
    """fast3r-jax on upstream's inputs and weights, against upstream's outputs: errors per dtype and output."""
    meta = json.loads((out_dir / "meta.json").read_text())
    cfg = config_lib.Fast3RConfig.from_dict(meta["config"])
    params, jax_weights = _compare_params(args, cfg, out_dir)
    with np.load(out_dir / "inputs.npz") as z:
        imgs = z["imgs"]
    n, (height, width) = imgs.shape[0], imgs.shape[2:]
    views = [dict(img=imgs[i:i + 1], true_shape=np.array([[height, width]], np.int32)) for i in range(n)]
    refs, report = {}, dict(torch_weights=meta["weights"], jax_weights=jax_weights, views=n, height=height,
                            width=width, image_ids="0..N-1", jax_backend=jax.default_backend(), runs=[])
    print(f"\nfast3r-jax vs upstream PyTorch outputs: {n} views {width}x{height}, image ids 0..{n - 1}, upstream: "
          f"{meta['weights']}, fast3r-jax: {jax_weights}, on {jax.default_backend()}")
    print("rel = max|jax - torch| / max|torch| over all views")
    print(f"{'dtype':9} {'torch on':8} {'output':20} {'max abs':>9} {'max rel':>9} {'jax vs fp32 ref':>15} "
          f"{'torch vs fp32 ref':>17}")
    for run in meta["runs"]:
        dtype = run["dtype"]
        if "skipped" in run:
            print(f"{dtype:9} {run['device']:8} skipped: {run['skipped']}")
            report["runs"].append(run)
            continue
        with np.load(out_dir / run["file"]) as z:
            refs[dtype] = {k: z[k] for k in z.files}
        start = time.perf_counter()
        ours = {f"v{i}/{k}": v[k] for i, v in enumerate(predict(cfg, params, views, dtype=dtype)) for k in OUTPUT_KEYS}
        seconds = time.perf_counter() - start
        errors = _errors(ours, refs[dtype], n)
        extra = {}
        if dtype != "float32" and "float32" in refs:
            extra = dict(jax_vs_torch_float32=_errors(ours, refs["float32"], n),
                         torch_vs_torch_float32=_errors(refs[dtype], refs["float32"], n))
        report["runs"].append(dict(dtype=dtype, torch_device=run["device"], jax_seconds=seconds, errors=errors,
                                   **extra))
        for key in OUTPUT_KEYS:
            e = errors[key]
            ctx = ("-", "-")
            if extra:
                ctx = (f"{extra['jax_vs_torch_float32'][key]['max_rel']:.2e}",
                       f"{extra['torch_vs_torch_float32'][key]['max_rel']:.2e}")
            print(f"{dtype:9} {run['device']:8} {key:20} {e['max_abs']:>9.2e} {e['max_rel']:>9.2e} {ctx[0]:>15} "
                  f"{ctx[1]:>17}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--size", default="512x384", help="WxH of every view")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--attention", default="auto", choices=list(config_lib.ATTENTION_IMPLEMENTATIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--no-timing", action="store_true", help="skip the timing (e.g. with --compare alone)")
    upstream = parser.add_argument_group("upstream PyTorch reference")
    upstream.add_argument("--torch-reference", type=pathlib.Path, default=None, metavar="ROOT",
                          help="local checkout of facebookresearch/fast3r: time it beside fast3r-jax")
    upstream.add_argument("--torch-attention", default="flash_attention", choices=TORCH_ATTENTION,
                          help="upstream attn_implementation (the released model's: flash_attention)")
    upstream.add_argument("--compare", action="store_true",
                          help="numeric report: both implementations on the same inputs and weights")
    upstream.add_argument("--compare-views", type=int, default=4)
    upstream.add_argument("--compare-dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    upstream.add_argument("--torch-fp32-device", default="cpu",
                          help="device of upstream's float32 run ('' = the timing device); on CUDA its attention "
                               "runs under bfloat16 autocast even in float32")
    upstream.add_argument("--torch-checkpoint", type=pathlib.Path, default=None,
                          help="upstream weights for --compare (HF folder, .safetensors, .pth, Lightning .ckpt)")
    upstream.add_argument("--checkpoint", type=pathlib.Path, default=None,
                          help="converted fast3r-jax checkpoint for --compare (with --torch-checkpoint: its JAX side)")
    args = parser.parse_args()
    if (args.compare or args.torch_checkpoint or args.checkpoint) and not args.torch_reference:
        parser.error("--compare, --torch-checkpoint and --checkpoint need --torch-reference")
    if args.torch_reference and not (args.torch_reference / "fast3r" / "models" / "fast3r.py").is_file():
        parser.error(f"{args.torch_reference} is not a checkout of facebookresearch/fast3r")

    width, height = (int(x) for x in args.size.split("x"))
    result: dict = {}
    with tempfile.TemporaryDirectory() as compare_dir:
        if args.torch_reference:  # first: the other process gets the device before JAX allocates on it
            result["torch"] = run_torch_reference(args, compare_dir if args.compare else None)
        if not args.no_timing:
            result["env"], result["rows"] = run_jax(args, height, width)
            if args.torch_reference and "error" not in result["torch"]:
                result["side_by_side"] = print_side_by_side(result["rows"], result["torch"],
                                                            getattr(config_lib, args.config)())
        if args.compare and "compare" in result.get("torch", {}):
            result["compare"] = run_compare(args, pathlib.Path(compare_dir))
    if args.torch_reference and "error" not in result["torch"]:
        print("\nupstream run notes:\n  " + "\n  ".join(result["torch"].get("notes", [])))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    if args.torch_reference and "error" in result["torch"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
