"""The whole job, timed: `fast3r-jax reconstruct` from images on disk to files on disk, cold and warm.

    python benchmarks/end_to_end.py --input frames/ --checkpoint CK --views 8 32 128 512 1000 --json e2e.json
    python benchmarks/end_to_end.py --views 8 29          # CPU: a synthetic scene at 512x288, built-in model
    python benchmarks/end_to_end.py --input frames/ --checkpoint CK --views 8 32 128 --torch-reference .torchref


For each view count N (frames taken evenly from --input, a folder of photos or a video, at long side --size; without
--input a synthetic scene of N views is rendered at 512x288):
  command     `python -m fast3r_jax.cli reconstruct` as a child process, process start to outputs on disk, first
              with an empty compilation cache (cold), then again with the cache the first run filled (warm);
  in-process  one `fast3r_jax.Reconstructor` loaded once, then called twice (cold: compiles; warm: compiled).
Each run reports its stages from summary.json (checkpoint load, image load, inference, of it compile, cameras, each
export) and, for the command, start-up (imports, process start: wall time minus the stages). Results go to --json
and a Markdown table on standard output. Heavy: run it on the device machine, not on a shared CPU.

With --torch-reference ROOT (a checkout of facebookresearch/fast3r), upstream's own pipeline runs first on the same
frame folders in a child process (benchmarks/torch_pipeline.py: its load_images, bf16 inference, view-0 focal and
threaded PnP, a binary PLY; random ViT-L weights; cold = first call, warm = second, model already built), and the
table gains its rows and the ratio of our warm in-process time to its warm time. JAX is initialised only after the
command runs, and the command children and this process allocate GPU memory on demand, so each has the device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("checkpoint_s", "images_s", "inference_s", "compile_s", "cameras_s", "export_s")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # command children share the device with us


def prepare_frames(source: str | None, num_views: int, size: int, folder: pathlib.Path) -> pathlib.Path:
    """A folder of `num_views` input images: evenly spaced files of a folder (cycled when too few), frames of a
    video, or (no source) a synthetic scene at long side `size` and 16:9."""
    from fast3r_jax.io import images

    folder.mkdir(parents=True, exist_ok=True)
    if source is None:
        from fast3r_jax.data.synthetic import write_example_scene

        write_example_scene(folder, num_views=num_views, resolution=(size, size * 9 // 16 // 16 * 16))
        return folder
    if os.path.isfile(source) and source.lower().endswith(images.VIDEO_EXTENSIONS):
        import PIL.Image

        _, frames = images._open_video(source)
        decoded = list(frames)
        for k, index in enumerate(np.linspace(0, len(decoded) - 1, num_views).round().astype(int)):
            PIL.Image.fromarray(decoded[index]).save(folder / f"frame_{k:05d}.png")
        return folder
    paths = images.expand_image_paths(source)
    for k in range(num_views):
        src = pathlib.Path(paths[(k * len(paths)) // num_views if num_views <= len(paths) else k % len(paths)])
        os.symlink(src.resolve(), folder / f"{k:05d}_{src.name}")
    return folder


def _stages(summary: dict) -> dict[str, float]:
    timings = summary["timings"]
    return {k: timings[k] for k in STAGES if k in timings} | {f"export.{k}": v for k, v in timings["export"].items()}


def run_command(frames: pathlib.Path, out: pathlib.Path, cache: pathlib.Path, args: argparse.Namespace) -> dict:
    """One `fast3r-jax reconstruct` child process; its wall time and stages."""
    command = [sys.executable, "-m", "fast3r_jax.cli", "reconstruct", str(frames), "--out", str(out), "--overwrite",
               "--size", str(args.size), "--pose-solver", args.pose_solver, "--compilation-cache", str(cache)]
    command += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    stages = _stages(json.loads((out / "summary.json").read_text()))
    startup = wall - sum(v for k, v in stages.items() if k in STAGES and k != "compile_s")
    return dict(wall_s=wall, startup_s=startup, **stages)


def output_bytes(out: pathlib.Path) -> dict[str, int]:
    files = [p for p in out.rglob("*") if p.is_file()]
    return dict(total=sum(p.stat().st_size for p in files), ply=(out / "points.ply").stat().st_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="folder of photos or a video (default: a synthetic scene)")
    parser.add_argument("--views", type=int, nargs="+", default=None,
                        help="view counts (default 8 32 128 512 1000 on an accelerator, 8 29 on CPU)")
    parser.add_argument("--size", type=int, default=512, help="long side of the inputs (default 512)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the built-in model)")
    parser.add_argument("--pose-solver", choices=("pnp", "procrustes"), default="pnp")
    parser.add_argument("--modes", nargs="+", choices=("command", "in-process"), default=["command", "in-process"])
    parser.add_argument("--calls", type=int, choices=(1, 2), default=2,
                        help="in-process calls per view count: 1 (cold only, for very large N) or 2 (cold, warm)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--torch-reference", default=None, metavar="ROOT",
                        help="also time upstream's pipeline on the same frames (a checkout of facebookresearch/fast3r)")
    parser.add_argument("--torch-python", default=sys.executable, help="the Python that has torch (default: this one)")
    args = parser.parse_args()
    views = args.views or [8, 32, 128, 512, 1000]
    rows, upstream = [], None
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        tmp = pathlib.Path(tmp)
        folders = {n: prepare_frames(args.input, n, args.size, tmp / f"frames_{n}") for n in views}
        if args.torch_reference:
            upstream = run_upstream(list(folders.values()), tmp, args)
            for r in upstream["runs"]:
                n = next(k for k, f in folders.items() if str(f) == r["frames"])
                rows.append(dict(views=n, mode="upstream", run=r["run"], wall_s=r["total_s"], images_s=r["load_s"],
                                 inference_s=r["inference_s"], cameras_s=r["cameras_s"], export_s=r["export_s"]))
                print(json.dumps(rows[-1]), flush=True)
        if "command" in args.modes:
            for n, frames in folders.items():
                cache = tmp / f"cache_{n}"  # empty: the first run is cold
                for label in ("cold", "warm"):
                    result = run_command(frames, tmp / "out", cache, args)
                    rows.append(dict(views=n, mode="command", run=label, **result, **output_bytes(tmp / "out")))
                    print(json.dumps(rows[-1]), flush=True)

        import jax

        import fast3r_jax
        from fast3r_jax import reconstruct

        backend = jax.default_backend()
        rec = None
        for n, frames in folders.items():
            if "in-process" in args.modes:
                if rec is None:
                    start = time.perf_counter()
                    rec = fast3r_jax.Reconstructor(args.checkpoint, compilation_cache_dir=tmp / "cache_inprocess")
                    print(f"Reconstructor loaded in {time.perf_counter() - start:.2f} s", flush=True)
                config = reconstruct.ReconstructConfig(size=args.size, pose_solver=args.pose_solver, overwrite=True)
                for label in ("cold", "warm")[:args.calls]:
                    start = time.perf_counter()
                    summary = rec([frames], tmp / "out", config, progress=False, notify=lambda _: None)
                    rows.append(dict(views=n, mode="in-process", run=label, wall_s=time.perf_counter() - start,
                                     **_stages(summary), **output_bytes(tmp / "out")))
                    print(json.dumps(rows[-1]), flush=True)

    meta = dict(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                device=str(jax.devices()[0].device_kind), backend=backend, jax=jax.__version__,
                python=platform.python_version(), size=args.size, input=args.input or "synthetic",
                pose_solver=args.pose_solver, checkpoint=args.checkpoint or "built-in",
                upstream={k: v for k, v in upstream.items() if k != "runs"} if upstream else None)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    columns = ["wall_s", "startup_s", *STAGES, "export.ply_s", "export.colmap_s", "export.glb_s", "export.preview_s"]
    print(f"\n{meta['device']} ({backend}), jax {meta['jax']}, {meta['date']}, input {meta['input']} at {args.size}, "
          f"{args.pose_solver}")
    print("| views | mode | run | " + " | ".join(c.removesuffix("_s") for c in columns) + " | out / ply |")
    print("|" + "---|" * (len(columns) + 4))
    for r in rows:
        cells = [f"{r[c]:.2f}" if c in r else "" for c in columns]
        size = f"{r['total'] / r['ply']:.2f}" if "total" in r else ""
        print(f"| {r['views']} | {r['mode']} | {r['run']} | " + " | ".join(cells) + f" | {size} |")
    if upstream:
        print("\n| views | fast3r-jax in-process warm s | upstream warm s | ratio |\n|---|---|---|---|")
        for n in views:
            ours = [r["wall_s"] for r in rows if r["views"] == n and r["mode"] == "in-process" and r["run"] == "warm"]
            theirs = [r["wall_s"] for r in rows if r["views"] == n and r["mode"] == "upstream" and r["run"] == "warm"]
            if ours and theirs:
                print(f"| {n} | {ours[0]:.3f} | {theirs[0]:.3f} | {ours[0] / theirs[0]:.2f} |")


def run_upstream(folders: list[pathlib.Path], tmp: pathlib.Path, args: argparse.Namespace) -> dict:
    """benchmarks/torch_pipeline.py in a child process on the frame folders; its JSON."""
    out = tmp / "upstream.json"
    command = [args.torch_python, str(ROOT / "benchmarks" / "torch_pipeline.py"), "--root", args.torch_reference,
               "--size", str(args.size), "--out", str(tmp / "upstream_out"), "--json", str(out), "--frames",
               *map(str, folders)]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch_reference  # noqa: PLC0415  (upstream helpers; imported only with --torch-reference)

    return torch_reference.run_child(command, out)


if __name__ == "__main__":
    main()
