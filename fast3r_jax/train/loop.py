"""The training run: config as data, sharded steps, Orbax checkpoints, TensorBoard, validation.

Input: the grain pipeline (fast3r_jax.data.pipeline, host-loaded datasets) or, with `data.rendered`, synthetic
scenes rendered on the accelerator (fast3r_jax.data.rendered, which needs no grain); `_batches` is the one seam.

A run lives in `workdir`: `config.json` (the resolved TrainConfig), `checkpoints/<step>/` (Orbax, asynchronous,
keep-N, committed atomically: a step folder is visible only once complete), `tb/` (TensorBoard events) and
`metrics.jsonl` (one line per logged step). Starting a run in a workdir that holds checkpoints resumes from the
latest one: parameters, optimizer state, step, RNG and the data iterator.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import json
import os
import pathlib
import signal
import sys
import threading
import time
import typing
from typing import Any, Iterator, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from fast3r_jax import distributed
from fast3r_jax.checkpoint import load_config, load_pretrained, save_pretrained
from fast3r_jax.config import Fast3RConfig, TrainConfig, check_value, from_dict
from fast3r_jax.data import packed
from fast3r_jax.data.mixture import parse_mixture
from fast3r_jax.errors import InputError
from fast3r_jax.io.files import atomic_file
from fast3r_jax.model.fast3r import DTYPES
from fast3r_jax.model.flops import peak_flops, train_step_flops
from fast3r_jax.model.params import check_deeper, deepen, init_params
from fast3r_jax.sharding import make_mesh
from fast3r_jax.train import step as training
from fast3r_jax.train.optimizer import learning_rate, make_optimizer
from fast3r_jax.train.tensorboard import SummaryWriter, normalise_to_uint8

T = TypeVar("T")


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the step was not applied."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped the run before its last step, after a checkpoint: the same config resumes it."""


class _SigtermFlag:
    """While entered (in the main thread), SIGTERM, which schedulers send before preempting a job and `timeout`
    sends at its limit, only sets `received`: the loop then stops after its current step with a checkpoint instead
    of losing everything since the last one."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _set(self, signum, frame):
        self.received = True

    def __enter__(self) -> _SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._set)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _stop_requested(cfg: TrainConfig, done: int, started: float, sigterm: _SigtermFlag) -> tuple[bool, bool]:
    """(out of time, SIGTERM received) after step `done`, the same in every process: with several processes they
    are agreed on at log steps only (one small collective each), since a process that saved and stopped alone would
    leave the others waiting in the next step's collectives."""
    flags = [cfg.time_limit_s is not None and time.perf_counter() - started > cfg.time_limit_s, sigterm.received]
    if jax.process_count() > 1:
        if done % cfg.log_every and done != cfg.steps:
            return False, False
        flags = distributed.any_process(np.array(flags)).tolist()
    return bool(flags[0]), bool(flags[1])


def override(cfg: T, dotted: str, text: str) -> T:
    """Returns cfg with the field at `dotted` (e.g. 'optimizer.lr') set from a command-line value: a Python literal
    checked against the field's type (fast3r_jax.config.check_value; true/false in any case for a boolean), or, for a
    text field, the bare text (a path).
    InputError names the field: `steps=2.5`, `steps=abc`, `optimizer.lr=abc` and unknown fields are refused."""
    return _override(cfg, dotted.split("."), text, dotted)


def _override(cfg: T, names: list[str], text: str, dotted: str) -> T:
    head, rest = names[0], names[1:]
    fields = {f.name for f in dataclasses.fields(cfg)}
    if head not in fields:
        raise InputError(f"--set {dotted}: unknown config field {head!r}; {type(cfg).__name__} has {sorted(fields)}")
    if rest:
        inner = getattr(cfg, head)
        if not dataclasses.is_dataclass(inner):
            raise InputError(f"--set {dotted}: {head} is a {type(inner).__name__}, it has no field {rest[0]!r}")
        return dataclasses.replace(cfg, **{head: _override(inner, rest, text, dotted)})
    hint = typing.get_type_hints(type(cfg))[head]
    value: Any
    if text.lower() in ("true", "false"):  # booleans as the configs' JSON and the error messages spell them
        value = text.lower() == "true"
    else:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = text  # a bare string, e.g. a path
    try:
        value = check_value(value, hint, "--set", dotted)
    except InputError:
        if not isinstance(value, str) and _accepts_text(hint):
            value = text  # e.g. workdir=123
        else:
            raise
    try:
        return dataclasses.replace(cfg, **{head: value})
    except InputError as err:
        raise InputError(f"--set {dotted}={text}: {err}") from None


def _accepts_text(hint: Any) -> bool:
    return hint is str or str in typing.get_args(hint)


class _OnMesh:
    """A grain loader's iterator yielding (global batch on the mesh, unpacked there; orientations), checkpointable
    as the loader."""

    def __init__(self, iterator, mesh):
        self._it, self._mesh = iterator, mesh

    def __iter__(self) -> _OnMesh:
        return self

    def __next__(self) -> tuple[list[dict[str, jax.Array]], tuple[str, ...]]:
        batch = next(self._it)
        return packed.to_mesh(batch, self._mesh), packed.orientations(batch)

    def get_state(self) -> dict[str, int]:
        return self._it.get_state()

    def set_state(self, state: dict[str, int]) -> None:
        self._it.set_state(state)

    def close(self) -> None:
        self._it.close()


def _batches(cfg: TrainConfig, mesh, split: str = "train"):
    """The batches of `split` ('train': endless; 'val': one pass) as (global batch, orientations) pairs, from an
    iterator with get_state / set_state. grain is imported only for the host pipeline."""
    shard = {"shard_index": jax.process_index(), "shard_count": jax.process_count()}
    rendered = cfg.data.rendered
    if rendered is not None:
        from fast3r_jax.data.rendered import RenderedBatches  # noqa: PLC0415

        if split == "val":  # held-out scenes in the first bucket and resolution: one compilation
            rendered = dataclasses.replace(rendered, split="val", buckets=rendered.buckets[:1],
                                           resolutions=rendered.resolutions[:1], workers=0)
        return RenderedBatches(rendered, cfg.seed, mesh, **shard)
    from fast3r_jax.data.pipeline import make_loader  # noqa: PLC0415

    batch_size = cfg.data.batch_size // jax.process_count()
    if split == "val":
        loader = make_loader(parse_mixture(cfg.data.val), batch_size, seed=cfg.seed, **shard, augment=False,
                             num_epochs=1, resolutions=cfg.data.resolutions)
    else:
        loader = make_loader(parse_mixture(cfg.data.train), batch_size, seed=cfg.seed, **shard,
                             worker_count=cfg.data.workers, augment=cfg.data.augment,
                             resolutions=cfg.data.resolutions, aug_crop=cfg.data.aug_crop)
    return _OnMesh(iter(loader), mesh)


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
        init_cfg, params = load_pretrained(cfg.init)  # its config was checked by _check_start
        if init_cfg.architecture() != cfg.model.architecture():
            params = deepen(params, init_cfg, cfg.model, cfg.seed)
    else:
        params = functools.partial(init_params, cfg.model, cfg.seed)
    return training.create_state(params, tx, cfg.seed, shardings), 0


# Fields a resumed run may change: how long it runs, where its folder is, how it logs and saves; not what it computes.
RESUMABLE_FIELDS = ("steps", "time_limit_s", "compile_ahead", "log_every", "val_every", "ckpt_every", "keep", "workdir")


def _latest_step(workdir: pathlib.Path) -> int | None:
    """The last committed checkpoint step in `workdir`, None if there is none (nothing is written)."""
    if not (workdir / "checkpoints").is_dir():
        return None
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data")) as mgr:
        return mgr.latest_step()


def _check_start(workdir: pathlib.Path, cfg: TrainConfig, mesh_size: int) -> None:
    """Everything about the run that can be wrong, checked before anything is written to `workdir`: the saved
    config (only RESUMABLE_FIELDS may differ), the batch split, the data mixtures, the init checkpoint's model and
    a resume that would have nothing to do. InputError naming the field or folder."""
    saved = workdir / "config.json"
    if saved.exists():
        # read back as a config, so that fields added since the run started compare at their defaults
        old = json.loads(from_dict(TrainConfig, json.loads(saved.read_text()), str(saved)).to_json())
        new = json.loads(cfg.to_json())
        changed = sorted(k for k in old.keys() | new.keys()
                         if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k))
        if changed:
            raise InputError(f"{workdir} holds a run with a different config ({', '.join(changed)}); use another "
                             f"workdir (only {', '.join(RESUMABLE_FIELDS)} may change on resume)")
    rendered = cfg.data.rendered
    sizes = [("data.batch_size", cfg.data.batch_size)] if rendered is None else [
        (f"data.rendered.buckets ({views} views)", samples) for views, samples in rendered.buckets]
    for field, batch_size in sizes:
        for what, size in (("the data axis", mesh_size), ("the process count", jax.process_count())):
            if batch_size % size:
                raise InputError(f"{field}: batch size {batch_size} is not divisible by {what} ({size})")
    specs = [] if rendered is not None else [("data.train", cfg.data.train),
                                             ("data.val", cfg.data.val if cfg.val_batches else None)]
    for field, spec in specs:
        if spec is not None:
            try:
                parse_mixture(spec)
            except ValueError as err:
                raise InputError(f"{field}: {err}") from None
    latest = _latest_step(workdir)
    if latest is not None and latest >= cfg.steps:
        raise InputError(f"{workdir} already holds the checkpoint of step {latest}, at or past steps={cfg.steps}: "
                         "nothing to train; pass a larger --set steps=N to continue the run")
    if latest is None and cfg.init and load_config(cfg.init).architecture() != cfg.model.architecture():
        if not cfg.deepen_init:
            raise InputError(f"init checkpoint {cfg.init} has a different model config than the run")
        try:
            check_deeper(load_config(cfg.init), cfg.model)
        except InputError as err:
            raise InputError(f"deepen_init: init checkpoint {cfg.init}: {err}") from None


def _write_config(workdir: pathlib.Path, cfg: TrainConfig) -> None:
    """(Re)writes workdir/config.json, atomically (process 0 only)."""
    if jax.process_index() == 0:
        with atomic_file(workdir / "config.json", "w") as f:
            f.write(cfg.to_json())


def _throughput(cfg: TrainConfig, batch, seconds: float) -> dict[str, float]:
    sizes = [tuple(v["img"].shape[2:]) for v in batch]
    samples = batch[0]["img"].shape[0]  # the global batch
    per_step = train_step_flops(cfg.model, sizes, samples)
    tokens = samples * sum(h * w for h, w in sizes) / cfg.model.encoder.patch_size ** 2
    out = {"images_per_s": samples * len(sizes) / seconds, "tokens_per_s": tokens / seconds,
           "tflops_per_s": per_step / seconds / 1e12, "step_s": seconds}
    peak = peak_flops(jax.devices()[0].device_kind)
    if peak:
        out["mfu"] = per_step / seconds / (peak * jax.device_count())
    return out


def _validate(cfg, eval_step, state, mesh, writer, step) -> dict[str, float]:
    totals: dict[str, float] = {}
    count = 0
    for i, (batch, orient) in zip(range(cfg.val_batches), _batches(cfg, mesh, "val")):
        metrics, preds = eval_step(state.params, batch, orient, jax.random.key(i))
        for k, v in jax.device_get(metrics).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        count += 1
        if i == 0 and writer is not None:
            view = jax.device_get(preds[-1])
            writer.image("val/depth_local", normalise_to_uint8(view["pts3d_local"][0, ..., 2]), step)
            writer.image("val/conf", normalise_to_uint8(view["conf"][0]), step)
    return {f"val/{k}": v / max(count, 1) for k, v in totals.items()}


def _long_sides(cfg: TrainConfig) -> set[int]:
    """Long sides of the training images' resolutions (empty where the sources keep their own)."""
    resolutions = cfg.data.rendered.resolutions if cfg.data.rendered is not None else cfg.data.resolutions
    return {max(w, h) for w, h in resolutions or ()}


def _compile_ahead(cfg: TrainConfig, step_fn, state: training.TrainState, iterator, lead: bool) -> Iterator:
    """Compiles the step before any process runs it (for every batch shape of rendered data with cfg.compile_ahead;
    with several processes, for the first batch at least), then meets the other processes at a barrier
    (distributed.barrier). Returns the batches to train on: the first batch, where it was taken from `iterator` for
    this, then the rest of `iterator` (whose state stays the one a checkpoint saves)."""
    batches, shapes = iterator, []
    if cfg.compile_ahead and cfg.data.rendered is not None:
        shapes = iterator.step_shapes()
    if jax.process_count() > 1 and not shapes:
        first = next(iterator)
        batches, shapes = itertools.chain([first], iterator), [first]
    if shapes:
        seconds = training.precompile(step_fn, state, shapes, os.cpu_count() or 1)
        if lead:
            print(f"compiled the step for {len(shapes)} batch shapes in {seconds:.1f} s", flush=True)
    distributed.barrier("train step compiled")
    return batches


def train(cfg: TrainConfig) -> dict[str, float]:
    """Runs (or resumes) training to cfg.steps, or until cfg.time_limit_s. Returns the last logged metrics.

    SIGTERM ends the run after the current step with a checkpoint, then raises TrainingInterrupted."""
    workdir = pathlib.Path(cfg.workdir).absolute()
    try:
        mesh = make_mesh(cfg.mesh_data, cfg.mesh_tensor)
    except ValueError as err:
        raise InputError(f"mesh_data={cfg.mesh_data}, mesh_tensor={cfg.mesh_tensor}: {err}") from None
    _check_start(workdir, cfg, mesh.shape["data"])
    _write_config(workdir, cfg)
    lead = jax.process_index() == 0
    sides = _long_sides(cfg)
    if lead and sides and cfg.model.image_size not in sides:
        print(f"warning: model.image_size is {cfg.model.image_size} but the training images' long sides are "
              f"{sorted(sides)}: reconstruct uses image_size as its default --size", file=sys.stderr, flush=True)
    tx = make_optimizer(cfg.optimizer)
    dtype = DTYPES[cfg.dtype]
    step_fn, shardings = training.make_train_step(cfg.model, tx, mesh, cfg.layout, dtype=dtype, alpha=cfg.alpha,
                                                  pose_weight=cfg.pose_weight,
                                                  schedule=learning_rate(cfg.optimizer))
    eval_step = training.make_eval_step(cfg.model, mesh, dtype=dtype, alpha=cfg.alpha, pose_weight=cfg.pose_weight)
    iterator = _batches(cfg, mesh)
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, enable_async_checkpointing=True)
    writer = SummaryWriter(workdir / "tb") if lead else None
    last: dict[str, float] = {}
    interrupted_at = None
    with _SigtermFlag() as sigterm, ocp.CheckpointManager(workdir / "checkpoints", options=options,
                                                          item_names=("state", "data")) as mgr:
        state, start = _restore_or_init(cfg, tx, shardings, mgr, iterator)
        if writer is not None and start == 0:
            writer.text("config", "```\n" + cfg.to_json() + "\n```")
        started = time.perf_counter()
        batches = _compile_ahead(cfg, step_fn, state, iterator, lead)
        pending: list[tuple[int, Any]] = []
        tick = time.perf_counter()
        progress = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not lead, desc="train")
        for step in progress:
            batch, orient = next(batches)
            state, metrics = step_fn(state, batch, orient)
            pending.append((step + 1, metrics))
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                # every step's loss and finiteness, the last step's whole dict: a transfer per metric and step would be
                # tens of thousands with per-view metrics at many views (seconds per log)
                host = jax.device_get([(s, m["loss"], m["finite"]) for s, m in pending])
                bad = [(s, loss) for s, loss, finite in host if finite < 1]
                if bad:
                    raise NonFiniteLossError(f"non-finite loss or gradient at step {bad[0][0]} (loss {bad[0][1]}); "
                                             "the update was skipped and training stopped; last good checkpoint: "
                                             f"{mgr.latest_step()}")
                seconds = (time.perf_counter() - tick) / len(pending)
                last = {k: float(v) for k, v in jax.device_get(metrics).items()} | _throughput(cfg, batch, seconds)
                if lead:
                    writer.scalars({f"train/{k}": v for k, v in last.items()}, done)
                    with open(workdir / "metrics.jsonl", "a") as f:
                        for s, loss, _ in host:
                            f.write(json.dumps({"step": s, "loss": float(loss)}) + "\n")
                    progress.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{last['images_per_s']:.1f}")
                pending, tick = [], time.perf_counter()
            if cfg.val_batches and (done % cfg.val_every == 0 or done == cfg.steps):
                val = _validate(cfg, eval_step, state, mesh, writer, done)
                last |= val
                if writer is not None:
                    writer.scalars(val, done)
            out_of_time, signalled = _stop_requested(cfg, done, started, sigterm)
            if done % cfg.ckpt_every == 0 or done == cfg.steps or out_of_time or signalled:
                mgr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       data=ocp.args.JsonSave(iterator.get_state())))
            if (out_of_time or signalled) and done < cfg.steps:
                reason = "SIGTERM received" if signalled else f"time limit of {cfg.time_limit_s} s reached"
                progress.write(f"{reason} at step {done}; checkpoint saved")
                interrupted_at = done if signalled else None
                break
        mgr.wait_until_finished()
    iterator.close()
    if writer is not None:
        writer.close()
    if interrupted_at is not None:
        raise TrainingInterrupted(f"stopped by SIGTERM at step {interrupted_at} of {cfg.steps}; the checkpoint of "
                                  f"that step is in {workdir / 'checkpoints'} and the same command resumes the run")
    return last


def export_params(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None) -> pathlib.Path:
    """Writes the parameters of a training checkpoint as a pretrained folder (config.json + Orbax params)."""
    workdir = pathlib.Path(workdir).absolute()
    cfg_dict = json.loads((workdir / "config.json").read_text())
    model_cfg = Fast3RConfig.from_dict(cfg_dict["model"], str(workdir / "config.json"))
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data")) as mgr:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise InputError(f"{workdir} has no checkpoint")
        restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    params = jax.tree.map(np.asarray, restored["state"]["params"])
    return save_pretrained(out, model_cfg, params, notes={"source": "training", "workdir": str(workdir),
                                                          "step": int(step)})

