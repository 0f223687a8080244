"""Input-pipeline throughput: the grain loader on the dataset readers, on realistic files, in images/s per host.

    python benchmarks/input_throughput.py --workers 1 4 16 --seconds 10 --json input_throughput.json

Files: per layout (CO3D, ScanNet++, ARKitScenes, Habitat, BlendedMVS, MegaDepth), --frames frames at --size
(512x384), written into a temporary folder by fast3r_jax.data.layouts in that layout's encodings: JPEG (quality 95)
crops of one textured canvas, metric depth of a smooth surface with ~5% holes (uint16 PNG, half or float EXR),
cameras on a smooth path; scenes of --scene-frames frames (Habitat: its 5 views per key). The files stay in the page
cache, so reading costs decoding, not disk.

Loader: `make_loader` as configs/train_large.py sets it up: --views-view samples, augmentation on (random zoom with
each reader's own aug_crop margin; colour jitter drawn, to be applied on the devices), its readers' sampling
parameters, one resolution bucket (--resolution, the largest of the training buckets, the most pixels per image),
--batch samples per batch. 'all' mixes the six readers in equal shares as the training config does. Per (layout,
worker count) a fresh loader: the first max(1, workers) batches are warm-up (worker start-up, imports, first samples),
then batches are counted for --seconds (images/s = images of the batches that arrived / time from the end of the
warm-up to the last arrival; the window ends with the first batch after --seconds); the main process's CPU time per
sample over that window (receiving batches from the workers) is reported with it. Per layout, one process also times
the stages of a few samples (read, augment, pack) in ms per view and counts the packed bytes per sample that the
workers ship.

--unpack: the devices' share of the input, timed on the default device (a GPU where there is one): `packed.unpack`
of one packed batch of the measured shape (a real loader batch), jitted, and the colour jitter in it alone
(`jitter.apply`), in ms per batch (median of 20 calls after a warm-up), to set against the training step.

Target: the loader must feed --gpus GPUs training at --gpu-images-per-s each (the training-step benchmark's 20-view
ViT-L rate on an H200, the layer stacks unrolled) with a --margin safety factor: 3 x 8 x 53.0 = 1272 images/s per
host by default.
"""

from __future__ import annotations

import argparse
import collections.abc
import concurrent.futures
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # a plain checkout: `python benchmarks/input_throughput.py` from the repo root
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from timing import time_calls  # noqa: E402  (benchmarks/timing.py, beside this script)

from fast3r_jax.data import jitter, layouts, readers  # noqa: E402
from fast3r_jax.data.augment import augment_views  # noqa: E402
from fast3r_jax.data.mixture import Mixture  # noqa: E402
from fast3r_jax.data.packed import PACKED_KEYS, pack_view, unpack  # noqa: E402
from fast3r_jax.data.pipeline import make_loader  # noqa: E402

LAYOUTS = ("co3d", "scannetpp", "arkitscenes", "habitat", "blendedmvs", "megadepth")


class LazyFrames(collections.abc.Mapping):
    """key -> Frame made on access, so a layout's frames are never all in memory at once."""

    def __init__(self, keys: list, make: Callable[[int], layouts.Frame]):
        self._index = {key: i for i, key in enumerate(keys)}
        self._make = make

    def __getitem__(self, key) -> layouts.Frame:
        return self._make(self._index[key])

    def __iter__(self) -> Iterator:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class Scene:
    """Frames of one synthetic scene: crops of a textured canvas, a smooth depth surface, a camera path."""

    def __init__(self, seed: int, width: int, height: int):
        rng = np.random.default_rng(seed)
        self.width, self.height, self.seed = width, height, seed
        size = (2 * height, 3 * width)
        canvas = np.zeros(size + (3,), np.float32)  # (2H, 3W, 3): noise at several scales, photo-like JPEG sizes
        for cells, amplitude in ((4, 90), (16, 50), (64, 30), (size[0], 12)):
            noise = rng.normal(0, amplitude, (cells, cells * size[1] // size[0], 3)).astype(np.float32)
            canvas += layouts.cv2.resize(noise, size[::-1], interpolation=layouts.cv2.INTER_CUBIC)
        self.canvas = np.clip(canvas + rng.uniform(60, 190, 3), 0, 255).astype(np.uint8)
        v, u = np.mgrid[0:height, 0:width].astype(np.float32)
        self.surface = (2.5 + 0.4 * np.sin(u / 37 + seed) + 0.3 * np.cos(v / 53)).astype(np.float32)  # (H, W)

    def frame(self, i: int) -> layouts.Frame:
        rng = np.random.default_rng((self.seed, i))
        x = int((i * 7) % (2 * self.width))
        y = int((i * 3) % self.height)
        rgb = self.canvas[y:y + self.height, x:x + self.width]
        depth = self.surface * np.float32(1 + 0.01 * i)
        depth = np.where(rng.random(depth.shape) < 0.05, np.float32(0), depth)  # holes
        K = np.array([[0.9 * self.width, 0, (self.width - 1) / 2], [0, 0.9 * self.width, (self.height - 1) / 2],
                      [0, 0, 1]], np.float32)
        angle = 0.02 * i
        c2w = np.eye(4, dtype=np.float32)
        c2w[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        c2w[:3, 3] = (0.05 * i, 0.01 * i, self.seed)
        return layouts.Frame(rgb, depth, K, c2w)


def write_layout(name: str, root: str, frames: int, scene_frames: int, width: int, height: int) -> None:
    """`frames` frames of the layout `name` under `root`, in scenes of `scene_frames` (Habitat: 5 per key)."""
    scenes = [(s, min(scene_frames, frames - start)) for s, start in enumerate(range(0, frames, scene_frames))]
    make = [Scene(s, width, height) for s, _ in scenes]
    if name == "co3d":
        layouts.write_co3d(root, {f"cat{s}": {f"{s}_seq": LazyFrames(list(range(1, n + 1)), make[s].frame)}
                                  for s, n in scenes})
    elif name == "scannetpp":
        layouts.write_scannetpp(root, {f"scene{s:04d}": LazyFrames([f"frame_{i:06d}" for i in range(n)],
                                                                   make[s].frame) for s, n in scenes})
    elif name == "arkitscenes":
        layouts.write_arkitscenes(root, {f"{s:08d}": LazyFrames([f"{s:08d}_{i / 10:.3f}.png" for i in range(n)],
                                                             make[s].frame) for s, n in scenes})
    elif name == "habitat":
        scene = Scene(0, width, height)
        layouts.write_habitat(root, {f"scene{k // 100}/{k:05d}": LazyFrames(
            list(range(1, 6)), lambda i, k=k: scene.frame(5 * k + i)) for k in range(frames // 5)})
    elif name == "blendedmvs":
        layouts.write_blendedmvs(root, {(0x5a00 + s, 10 * s + 1): LazyFrames(list(range(n)), make[s].frame)
                                        for s, n in scenes})  # seq_low % 10 > 0: the train split
    elif name == "megadepth":
        layouts.write_megadepth(root, {f"{s:04d}/0": LazyFrames([f"{i}_img" for i in range(n)], make[s].frame)
                                       for s, n in scenes})  # not 0015 / 0022: the train split
    else:
        raise ValueError(f"unknown layout {name!r}")


def make_reader(name: str, root: str, views: int) -> readers.Reader:
    """The reader with configs/train_large.py's sampling parameters."""
    kwargs = {"co3d": {"window_degree_range": 360, "num_samples_per_window": 100, "mask_bg": "rand"},
              "scannetpp": {"window_size": 2 * views, "num_samples_per_window": 5},
              "arkitscenes": {"window_size": 5 * views, "num_samples_per_window": 5},
              "habitat": {"size": 1000}, "blendedmvs": {"window_size": 2 * views},
              "megadepth": {"window_size": 2 * views, "num_samples_per_window": 5}}[name]
    return readers.READERS[name](root, "train", num_views=views, **kwargs)


def stage_ms(source: readers.Reader, resolution: tuple[int, int], samples: int) -> dict[str, float]:
    """Milliseconds per view of reading, augmenting and packing (this process), and packed MiB per sample."""
    totals = {"read": 0.0, "augment": 0.0, "pack": 0.0}
    views, nbytes = 0, 0
    for k in range(samples):
        rng = np.random.default_rng(k)
        start = time.perf_counter()
        sample = readers.load_sample(source, k * 7919 % len(source), rng, world_points=False)  # as the loader
        mid = time.perf_counter()
        sample = augment_views(sample, resolution, rng, source.aug_crop, jitter=True, world_points=False)
        end = time.perf_counter()
        packed = [pack_view(v) for v in sample]
        totals["pack"] += time.perf_counter() - end
        totals["read"] += mid - start
        totals["augment"] += end - mid
        views += len(sample)
        nbytes += sum(a.nbytes for v in packed for a in v.values())
    return {k: 1e3 * v / views for k, v in totals.items()} | {"mib_per_sample": nbytes / samples / 2**20}


def throughput(source, workers: int, batch: int, views: int, resolution: tuple[int, int], seconds: float) -> dict:
    """Images/s of a fresh loader after its warm-up (see the module docstring)."""
    loader = make_loader(source, batch, seed=0, worker_count=workers, augment=True, resolutions=(resolution,),
                         aug_crop=None)
    it = iter(loader)
    try:
        start = time.perf_counter()
        for _ in range(max(1, workers)):
            next(it)
        warm, cpu = time.perf_counter(), time.process_time()
        images, samples, now = 0, 0, warm
        while now - warm < seconds:
            packed = next(it)
            now = time.perf_counter()
            samples += packed["img"].shape[0]
            images += packed["img"].shape[0] * packed["img"].shape[1]
        cpu = time.process_time() - cpu
    finally:
        it.close()
    return {"workers": workers, "warmup_s": warm - start, "seconds": now - warm, "images": images,
            "images_per_s": images / (now - warm), "main_cpu_ms_per_sample": 1e3 * cpu / samples}


def device_ms(packed: dict[str, np.ndarray], calls: int = 20) -> dict[str, float]:
    """Median ms per call on the default device of unpacking `packed` and of jittering its images alone."""
    arrays = jax.device_put({key: packed[key] for key in PACKED_KEYS})
    programs = {"unpack": (jax.jit(unpack), (arrays,)),
                "jitter": (jax.jit(jitter.apply), (arrays["img"], arrays["jitter"]))}
    out = {"device": str(jax.devices()[0].device_kind)}
    for name, (fn, fn_args) in programs.items():
        out[f"{name}_ms"] = 1e3 * time_calls(fn, *fn_args, repeats=calls)[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16], help="grain worker processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per (layout, workers)")
    parser.add_argument("--layouts", nargs="+", default=[*LAYOUTS, "all"], choices=[*LAYOUTS, "all"])
    parser.add_argument("--views", type=int, default=20, help="views per sample")
    parser.add_argument("--batch", type=int, default=1, help="samples per batch")
    parser.add_argument("--size", default="512x384", help="WxH of the stored frames")
    parser.add_argument("--resolution", default="512x384", help="WxH training bucket")
    parser.add_argument("--frames", type=int, default=240, help="frames per layout")
    parser.add_argument("--scene-frames", type=int, default=120, help="frames per scene")
    parser.add_argument("--stage-samples", type=int, default=2, help="samples timed stage by stage per layout")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs one host feeds")
    parser.add_argument("--gpu-images-per-s", type=float, default=53.0, help="images/s one GPU trains on")
    parser.add_argument("--margin", type=float, default=3.0, help="loader rate / consumption required")
    parser.add_argument("--root", type=pathlib.Path, default=None, help="write the files here (default: a temp dir)")
    parser.add_argument("--unpack", action="store_true", help="also time unpacking and jitter on the device")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    resolution = tuple(int(x) for x in args.resolution.split("x"))
    if args.frames < args.views or args.scene_frames < args.views:
        parser.error("--frames and --scene-frames must be at least --views")

    env = {"python": platform.python_version(), "cpus": os.cpu_count(), "views": args.views, "batch": args.batch,
               "size": args.size, "resolution": args.resolution, "frames_per_layout": args.frames}
    print(json.dumps(env), flush=True)
    used = LAYOUTS if "all" in args.layouts else tuple(args.layouts)  # the layouts written and read
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        roots = {name: os.path.join(tmp, name) for name in used}
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(min(len(used), os.cpu_count() or 1)) as pool:
            list(pool.map(lambda n: write_layout(n, roots[n], args.frames, args.scene_frames, width, height), used))
        size = sum(f.stat().st_size for f in pathlib.Path(tmp).rglob("*") if f.is_file())
        print(f"wrote {len(used)} x {args.frames} frames ({size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        sources = {name: make_reader(name, roots[name], args.views) for name in used}
        stages = {}
        print(f"{'layout':<12} {'read ms':>8} {'augment ms':>10} {'pack ms':>8}   (per view, one process)  "
              f"MiB per sample")
        for name in used:
            stages[name] = stage_ms(sources[name], resolution, args.stage_samples)
            print(f"{name:<12} {stages[name]['read']:>8.1f} {stages[name]['augment']:>10.1f} "
                  f"{stages[name]['pack']:>8.1f}   {stages[name]['mib_per_sample']:>35.1f}", flush=True)
        unpacked = None
        if args.unpack:
            loader = make_loader(sources[used[0]], args.batch, seed=0, worker_count=0, augment=True,
                                 resolutions=(resolution,), aug_crop=None)
            it = iter(loader)
            unpacked = device_ms(next(it))
            it.close()
            print(f"device ({unpacked['device']}), one batch of {args.batch} x {args.views} views at "
                  f"{args.resolution}: unpack {unpacked['unpack_ms']:.2f} ms, of which colour jitter "
                  f"{unpacked['jitter_ms']:.2f} ms alone", flush=True)
        sources["all"] = Mixture([(1000, sources[name]) for name in used])
        rows = []
        for name in args.layouts:
            for workers in args.workers:
                row = dict(layout=name, **throughput(sources[name], workers, args.batch, args.views, resolution,
                                                     args.seconds))
                rows.append(row)
                print(f"{name:<12} {workers:>3} workers: {row['images_per_s']:8.1f} images/s "
                      f"({row['images']} images in {row['seconds']:.1f} s, warm-up {row['warmup_s']:.1f} s; "
                      f"main process {row['main_cpu_ms_per_sample']:.1f} ms CPU per sample)", flush=True)
    target = args.margin * args.gpus * args.gpu_images_per_s
    print("\n| layout | " + " | ".join(f"{w} workers" for w in args.workers) + " |")
    print("|---|" + "---|" * len(args.workers))
    for name in args.layouts:
        rates = {r["workers"]: r["images_per_s"] for r in rows if r["layout"] == name}
        print(f"| {name} | " + " | ".join(f"{rates[w]:.0f}" for w in args.workers) + " |")
    best = max((r for r in rows if r["layout"] == args.layouts[-1]), key=lambda r: r["images_per_s"])
    verdict = "met" if best["images_per_s"] >= target else "not met"
    print(f"\nimages/s per host; target >= {target:.0f} ({args.margin:g} x {args.gpus} GPUs x "
          f"{args.gpu_images_per_s:g} images/s): {verdict} ({args.layouts[-1]}: {best['images_per_s']:.0f} with "
          f"{best['workers']} workers)")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "stages_ms_per_view": stages, "rows": rows, "unpack": unpacked,
                                         "target": target, "target_met": verdict == "met"}, indent=1))


if __name__ == "__main__":
    main()
