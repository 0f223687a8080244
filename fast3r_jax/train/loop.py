"""The training run: config as data, grain input, sharded steps, Orbax checkpoints, TensorBoard, validation.

A run lives in `workdir`: `config.json` (the resolved TrainConfig), `checkpoints/<step>/` (Orbax, asynchronous,
keep-N, committed atomically: a step folder is visible only once complete), `tb/` (TensorBoard events) and
`metrics.jsonl` (one line per logged step). Starting a run in a workdir that holds checkpoints resumes from the
latest one: parameters, optimizer state, step, RNG and the data iterator.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from fast3r_jax import config as config_lib
from fast3r_jax.checkpoint import load_pretrained, save_pretrained
from fast3r_jax.data.mixture import parse_mixture
from fast3r_jax.data.pipeline import make_loader
from fast3r_jax.model.fast3r import DTYPES
from fast3r_jax.model.flops import peak_flops, train_step_flops
from fast3r_jax.model.params import init_params
from fast3r_jax.sharding import LAYOUTS, make_mesh
from fast3r_jax.train import step as training
from fast3r_jax.train.optimizer import OptimizerConfig, learning_rate, make_optimizer
from fast3r_jax.train.tensorboard import SummaryWriter, normalise_to_uint8


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the step was not applied."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: str = "2000 @ synthetic(num_scenes=2000, num_views=4, resolution=(64, 48), split='train')"
    val: str = "16 @ synthetic(num_scenes=16, num_views=4, resolution=(64, 48), split='val')"
    resolutions: tuple | None = ((64, 48),)  # landscape (W, H) buckets, one per batch; None keeps the source's
    augment: bool = True  # random zoom (aug_crop) and colour jitter
    aug_crop: int | None = 0  # None: each dataset's own margin (upstream's per-dataset values)
    batch_size: int = 4  # global batch (samples); split over the mesh's data axis and processes
    workers: int = 0  # grain worker processes per host


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: config_lib.Fast3RConfig = config_lib.tiny()
    optimizer: OptimizerConfig = OptimizerConfig(lr=3e-4, warmup_steps=20, total_steps=300, grad_clip_norm=1.0)
    data: DataConfig = DataConfig()
    init: str | None = None  # converted checkpoint folder to start from (fine-tuning); None: random init
    steps: int = 300
    dtype: str = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
    layout: str = "zero2"  # replicated | zero2 | fsdp (see fast3r_jax.sharding)
    mesh_data: int = -1  # data-axis size (-1: all devices not used by the tensor axis)
    mesh_tensor: int = 1  # tensor-parallel degree
    alpha: float = 0.2  # confidence-loss regulariser
    seed: int = 0
    workdir: str = "runs/tiny_synthetic"
    log_every: int = 10
    val_every: int = 100
    val_batches: int = 2  # 0 disables validation
    ckpt_every: int = 100
    keep: int = 3  # checkpoints kept
    time_limit_s: float | None = None  # stop (with a checkpoint) once this much wall time has passed

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.steps < 1 or self.log_every < 1 or self.ckpt_every < 1 or self.val_every < 1:
            raise ValueError("steps, log_every, ckpt_every and val_every must be positive")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def override(cfg, dotted: str, text: str):
    """Returns cfg with the field at `dotted` (e.g. 'optimizer.lr') set from a command-line value."""
    head, _, rest = dotted.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if head not in fields:
        raise ValueError(f"unknown config field {dotted!r}; {type(cfg).__name__} has {sorted(fields)}")
    if rest:
        return dataclasses.replace(cfg, **{head: override(getattr(cfg, head), rest, text)})
    try:
        value: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string, e.g. a path
    return dataclasses.replace(cfg, **{head: value})


def _restore_or_init(cfg: TrainConfig, tx, shardings, mgr: ocp.CheckpointManager, iterator):
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            jax.eval_shape(lambda: training.init_state(init_params(cfg.model, 0), tx, cfg.seed)),
                            shardings)
    step = mgr.latest_step()
    if step is not None:
        restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             data=ocp.args.JsonRestore()))
        iterator.set_state(restored["data"])
        return restored["state"], step
    if cfg.init:
        model_cfg, params = load_pretrained(cfg.init)
        if model_cfg != cfg.model:
            raise ValueError(f"init checkpoint {cfg.init} has a different model config than the run")
    else:
        params = functools.partial(init_params, cfg.model, cfg.seed)
    return training.create_state(params, tx, cfg.seed, shardings), 0


# Fields a resumed run may change: how long it runs, where its folder is, how it logs and saves; not what it computes.
RESUMABLE_FIELDS = ("steps", "time_limit_s", "log_every", "val_every", "ckpt_every", "keep", "workdir")


def _check_workdir(workdir: pathlib.Path, cfg: TrainConfig) -> None:
    """Refuses a workdir whose saved config differs from cfg outside RESUMABLE_FIELDS; (re)writes config.json."""
    saved = workdir / "config.json"
    if saved.exists():
        old, new = json.loads(saved.read_text()), json.loads(cfg.to_json())
        changed = sorted(k for k in old.keys() | new.keys()
                         if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k))
        if changed:
            raise ValueError(f"{workdir} holds a run with a different config ({', '.join(changed)}); use another "
                             f"workdir (only {', '.join(RESUMABLE_FIELDS)} may change on resume)")
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".json.tmp")
        tmp.write_text(cfg.to_json())
        tmp.replace(saved)


def _throughput(cfg: TrainConfig, batch, seconds: float) -> dict[str, float]:
    sizes = [tuple(v["img"].shape[2:]) for v in batch]
    samples = batch[0]["img"].shape[0] * jax.process_count()  # the global batch: every process loads its part
    per_step = train_step_flops(cfg.model, sizes, samples)
    tokens = samples * sum(h * w for h, w in sizes) / cfg.model.encoder.patch_size ** 2
    out = {"images_per_s": samples * len(sizes) / seconds, "tokens_per_s": tokens / seconds,
           "tflops_per_s": per_step / seconds / 1e12, "step_s": seconds}
    peak = peak_flops(jax.devices()[0].device_kind)
    if peak:
        out["mfu"] = per_step / seconds / (peak * jax.device_count())
    return out


def _validate(cfg, eval_step, state, mesh, writer, step) -> dict[str, float]:
    loader = make_loader(parse_mixture(cfg.data.val), cfg.data.batch_size // jax.process_count(), seed=cfg.seed,
                         shard_index=jax.process_index(), shard_count=jax.process_count(), augment=False,
                         num_epochs=1, resolutions=cfg.data.resolutions)
    totals: dict[str, float] = {}
    count = 0
    for i, batch in zip(range(cfg.val_batches), loader):
        metrics, preds = eval_step(state.params, training.device_batch(batch, mesh), training.orientations(batch),
                                   jax.random.key(i))
        for k, v in jax.device_get(metrics).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        count += 1
        if i == 0 and writer is not None:
            view = jax.device_get(preds[-1])
            writer.image("val/depth_local", normalise_to_uint8(view["pts3d_local"][0, ..., 2]), step)
            writer.image("val/conf", normalise_to_uint8(view["conf"][0]), step)
    return {f"val/{k}": v / max(count, 1) for k, v in totals.items()}


def train(cfg: TrainConfig) -> dict[str, float]:
    """Runs (or resumes) training to cfg.steps. Returns the last logged metrics."""
    workdir = pathlib.Path(cfg.workdir).absolute()
    _check_workdir(workdir, cfg)
    lead = jax.process_index() == 0
    mesh = make_mesh(cfg.mesh_data, cfg.mesh_tensor)
    tx = make_optimizer(cfg.optimizer)
    dtype = DTYPES[cfg.dtype]
    step_fn, shardings = training.make_train_step(cfg.model, tx, mesh, cfg.layout, dtype=dtype, alpha=cfg.alpha,
                                                  schedule=learning_rate(cfg.optimizer))
    eval_step = training.make_eval_step(cfg.model, mesh, dtype=dtype, alpha=cfg.alpha)
    for what, size in (("the data axis", mesh.shape["data"]), ("the process count", jax.process_count())):
        if cfg.data.batch_size % size:
            raise ValueError(f"batch_size {cfg.data.batch_size} is not divisible by {what} ({size})")
    loader = make_loader(parse_mixture(cfg.data.train), cfg.data.batch_size // jax.process_count(), seed=cfg.seed,
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         worker_count=cfg.data.workers, augment=cfg.data.augment,
                         resolutions=cfg.data.resolutions, aug_crop=cfg.data.aug_crop)
    iterator = iter(loader)
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, enable_async_checkpointing=True)
    writer = SummaryWriter(workdir / "tb") if lead else None
    last: dict[str, float] = {}
    with ocp.CheckpointManager(workdir / "checkpoints", options=options, item_names=("state", "data")) as mgr:
        state, start = _restore_or_init(cfg, tx, shardings, mgr, iterator)
        if writer is not None and start == 0:
            writer.text("config", "```\n" + cfg.to_json() + "\n```")
        pending: list[tuple[int, Any]] = []
        tick = started = time.perf_counter()
        progress = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not lead, desc="train")
        for step in progress:
            batch = next(iterator)
            state, metrics = step_fn(state, training.device_batch(batch, mesh), training.orientations(batch))
            pending.append((step + 1, metrics))
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                host = jax.device_get(pending)
                bad = [s for s, m in host if m["finite"] < 1]
                if bad:
                    raise NonFiniteLossError(f"non-finite loss or gradient at step {bad[0]} (loss "
                                             f"{host[[s for s, _ in host].index(bad[0])][1]['loss']}); the update "
                                             "was skipped and training stopped; last good checkpoint: "
                                             f"{mgr.latest_step()}")
                seconds = (time.perf_counter() - tick) / len(pending)
                last = {k: float(v) for k, v in host[-1][1].items()} | _throughput(cfg, batch, seconds)
                if lead:
                    writer.scalars({f"train/{k}": v for k, v in last.items()}, done)
                    with open(workdir / "metrics.jsonl", "a") as f:
                        for s, m in host:
                            f.write(json.dumps({"step": s, "loss": float(m["loss"])}) + "\n")
                    progress.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{last['images_per_s']:.1f}")
                pending, tick = [], time.perf_counter()
            if cfg.val_batches and (done % cfg.val_every == 0 or done == cfg.steps):
                val = _validate(cfg, eval_step, state, mesh, writer, done)
                last |= val
                if writer is not None:
                    writer.scalars(val, done)
            out_of_time = cfg.time_limit_s is not None and time.perf_counter() - started > cfg.time_limit_s
            if done % cfg.ckpt_every == 0 or done == cfg.steps or out_of_time:
                mgr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       data=ocp.args.JsonSave(iterator.get_state())))
            if out_of_time:
                progress.write(f"time limit of {cfg.time_limit_s} s reached at step {done}; checkpoint saved")
                break
        mgr.wait_until_finished()
    if writer is not None:
        writer.close()
    return last


def export_params(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None) -> pathlib.Path:
    """Writes the parameters of a training checkpoint as a pretrained folder (config.json + Orbax params)."""
    workdir = pathlib.Path(workdir).absolute()
    cfg_dict = json.loads((workdir / "config.json").read_text())
    model_cfg = config_lib.Fast3RConfig.from_dict(cfg_dict["model"])
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data")) as mgr:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{workdir} has no checkpoint")
        restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    params = jax.tree.map(np.asarray, restored["state"]["params"])
    return save_pretrained(out, model_cfg, params, notes={"source": "training", "workdir": str(workdir),
                                                          "step": int(step)})

