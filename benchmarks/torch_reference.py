"""Upstream PyTorch Fast3R (facebookresearch/fast3r) beside fast3r-jax: speed and outputs, in a process of its own.

    python benchmarks/torch_reference.py --root .torchref --config tiny --views 2 4 --size 224x224 --json t.json

Normally started by `benchmarks/inference.py --torch-reference ROOT`, which runs it before JAX touches the GPU (so
each framework has the whole device, and upstream's import-time path and module changes stay out of our process).

ROOT is a local checkout of upstream's repository (its `fast3r/` package; kept out of version control, nothing of it
is copied here). Only the modules that define the network are imported. How they are loaded, and the one change
made to upstream's behaviour, are reported in the JSON's `notes`:

- `fast3r/utils/__init__.py` and `fast3r/dust3r/datasets/__init__.py` are not executed (they import the training
  and data stack: hydra, rich, every dataset); their submodules load as usual.
- `omegaconf` (used by the model only for `isinstance(args, DictConfig)`) and
  `fast3r.dust3r.datasets.base.base_stereo_view_dataset` (imported by the model for `view_name`, a label in a
  diagnostic message) are replaced by small stand-ins only when they cannot be imported.
- Under bf16 autocast, `ManyAR_PatchEmbed.forward` is replaced by an equivalent that allocates its token buffer in
  the projection's dtype: upstream allocates it in the weights' dtype (float32), and the bfloat16 projection then
  cannot be written into it. Without autocast (float32) upstream's own forward runs.

Needs: torch, numpy, einops, huggingface_hub (>= 0.22, the model's base class), packaging, lightning_utilities
(upstream's logger) and fast3r_jax (config and the torch-free checkpoint reader; JAX is kept on the CPU here).

Timing: random weights (seeded), inputs uniform in [-1, 1], eval mode, `torch.no_grad`, bf16 autocast as upstream's
`inference` sets it (float32: autocast off). One warm-up, then the median of --repeats whole forwards (synchronized).
The encoder / fusion / heads split is taken in separate forwards from CUDA events (CPU: clock reads) recorded by hooks
on `model.encoder` and `model.decoder`: encoder = first encoder call to last encoder return, fusion = the decoder,
heads = decoder return to the end of the forward. Peak memory: `torch.cuda.max_memory_allocated` (weights included).
Out of memory at one view count is recorded and the sweep goes on.

Training (started by benchmarks/train_step.py and benchmarks/train_parity.py): upstream's model in train mode with its
training criterion (loaded from fast3r/dust3r/losses.py, see NOTE_DUST3R) and torch.optim.AdamW as its config sets
it; one step is `train_step` (NOTE_TRAIN_STEP). --train-views times that step per view count (median of --repeats
after a warm-up, CUDA peak memory per row; --max-views then searches the largest view count that trains,
`largest_fitting`). --train-parity DIR runs the plan that train_parity.py wrote there: the same initial weights,
batches (DIR/data.npz), image ids (`feed_image_ids`, NOTE_IMAGE_IDS) and learning rates as our side.

Comparison (--compare-dir): one forward per dtype on the same inputs, the outputs written as .npz for the caller;
image ids are the sequential 0..N-1 that upstream uses with `random_image_idx_embedding` off (set on the instance;
the embedding math is unchanged). The float32 reference runs on the CPU by default: on CUDA upstream's attention
runs under its own bfloat16 autocast even when the model runs in float32.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.machinery
import importlib.util
import json
import math
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fast3r_jax import config as config_lib  # noqa: E402
from fast3r_jax.model.fast3r import OUTPUT_KEYS  # noqa: E402

ATTENTION = ("flash_attention", "pytorch_auto", "pytorch_naive")  # upstream's attn_implementation values

NOTE_INIT_BYPASS = ("not executed: fast3r/utils/__init__.py and fast3r/dust3r/datasets/__init__.py (training and data "
                    "imports); their submodules are imported directly")
NOTE_OMEGACONF = ("omegaconf is not installed: a stand-in provides DictConfig/OmegaConf, which the model uses only to "
                  "convert config objects (plain dicts are passed here)")
NOTE_VIEW_NAME = ("fast3r.dust3r.datasets.base.base_stereo_view_dataset could not be imported ({error}): a stand-in "
                  "provides view_name, which the model uses only in a diagnostic message")
NOTE_PATCH_EMBED = ("patched at run time: ManyAR_PatchEmbed.forward under autocast allocates its token buffer in the "
                    "projection's dtype (upstream allocates it in the weights' float32 and fails to store the bfloat16 "
                    "projection); same projection, positions and norm; float32 runs use upstream's forward")


# ---------------------------------------------------------------------------------------------------------------------
# Config: our Fast3RConfig -> upstream's constructor arguments (its config.json layout).


def upstream_config(cfg: config_lib.Fast3RConfig, attn_implementation: str = "flash_attention") -> dict[str, Any]:
    """Upstream's `Fast3R(**d)` arguments for a config; `config_from_upstream(d)` gives `cfg` back (checked)."""
    if attn_implementation not in ATTENTION:
        raise ValueError(f"attn_implementation must be one of {ATTENTION}, got {attn_implementation!r}")
    enc, fus, head = cfg.encoder, cfg.fusion, cfg.head
    base = enc.rope_base
    d = {
        "encoder_args": {"encoder_type": "croco", "img_size": 512, "patch_size": enc.patch_size,
                         "patch_embed_cls": "ManyAR_PatchEmbed", "embed_dim": enc.embed_dim,
                         "num_heads": enc.num_heads, "depth": enc.depth, "mlp_ratio": enc.mlp_ratio,
                         "pos_embed": f"RoPE{int(base) if float(base).is_integer() else base}",
                         "attn_implementation": attn_implementation},
        "decoder_args": {"decoder_type": "fast3r", "random_image_idx_embedding": fus.random_image_ids,
                         "enc_embed_dim": enc.embed_dim, "embed_dim": fus.embed_dim, "num_heads": fus.num_heads,
                         "depth": fus.depth, "mlp_ratio": fus.mlp_ratio, "qkv_bias": fus.qkv_bias, "drop": 0.0,
                         "attn_drop": 0.0, "attn_implementation": attn_implementation,
                         "attn_bias_for_inference_enabled": fus.inference_attention_scale},
        "head_args": {"head_type": "dpt", "output_mode": "pts3d", "landscape_only": head.landscape_only,
                      "depth_mode": list(head.depth_mode), "conf_mode": list(head.conf_mode),
                      "patch_size": enc.patch_size, "with_local_head": head.with_local_head},
    }
    back = config_lib.from_upstream(d)
    if back != cfg.replace(attention=back.attention, remat=back.remat, remat_policy=back.remat_policy):
        raise ValueError(f"config has no upstream equivalent (the round trip gives {back})")
    return d


# ---------------------------------------------------------------------------------------------------------------------
# Loading upstream's network modules from a checkout.


def _package_without_init(name: str, path: pathlib.Path) -> types.ModuleType:
    spec = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    spec.submodule_search_locations = [str(path)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _omegaconf_stand_in() -> types.ModuleType:
    module = types.ModuleType("omegaconf")

    class DictConfig:  # never instantiated: the isinstance checks are false for the plain dicts passed here
        pass

    class OmegaConf:
        @staticmethod
        def to_container(cfg, *args, **kwargs):
            raise TypeError("omegaconf stand-in: pass plain dicts")

    module.DictConfig, module.OmegaConf = DictConfig, OmegaConf
    return module


def _view_name_stand_in() -> types.ModuleType:
    module = types.ModuleType("fast3r.dust3r.datasets.base.base_stereo_view_dataset")
    module.view_name = lambda view, batch_index=None: f"view(keys={sorted(view)})"
    return module


def load_upstream(root: str | os.PathLike) -> tuple[types.ModuleType, list[str]]:
    """Imports upstream's `fast3r.models.fast3r` from a checkout; returns it and notes on how it was loaded."""
    root = pathlib.Path(root).resolve()
    if not (root / "fast3r" / "models" / "fast3r.py").is_file():
        raise FileNotFoundError(f"{root} is not a checkout of facebookresearch/fast3r (no fast3r/models/fast3r.py)")
    if "fast3r" in sys.modules:
        raise RuntimeError("a module named 'fast3r' is already imported")
    sys.path.insert(0, str(root))
    notes = [f"upstream checkout: {root}"]
    importlib.import_module("fast3r")
    importlib.import_module("fast3r.dust3r")
    _package_without_init("fast3r.utils", root / "fast3r" / "utils")
    _package_without_init("fast3r.dust3r.datasets", root / "fast3r" / "dust3r" / "datasets")
    notes.append(NOTE_INIT_BYPASS)
    try:
        importlib.import_module("omegaconf")
    except ImportError:
        sys.modules["omegaconf"] = _omegaconf_stand_in()
        notes.append(NOTE_OMEGACONF)
    name = "fast3r.dust3r.datasets.base.base_stereo_view_dataset"
    try:
        importlib.import_module(name)
    except Exception as err:  # torchvision, cv2, ... missing or broken: only a message label depends on it
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        importlib.import_module("fast3r.dust3r.datasets.base")
        sys.modules[name] = _view_name_stand_in()
        notes.append(NOTE_VIEW_NAME.format(error=f"{type(err).__name__}: {err}"))
    module = importlib.import_module("fast3r.models.fast3r")
    _patch_many_ar_embed()
    notes.append(NOTE_PATCH_EMBED)
    return module, notes


def _patch_many_ar_embed() -> None:
    import torch
    from fast3r.dust3r import patch_embed

    cls = patch_embed.ManyAR_PatchEmbed
    upstream_forward = cls.forward

    def forward(self, img, true_shape):
        if not torch.is_autocast_enabled(img.device.type):
            return upstream_forward(self, img, true_shape)
        return _embed_in_projection_dtype(self, img, true_shape)

    cls.forward = forward


def _embed_in_projection_dtype(module, img, true_shape):
    """Patch tokens and (row, col) positions of landscape-layout images; portrait samples are projected transposed."""
    batch, _, height, width = img.shape
    ph, pw = module.patch_size
    if width < height or height % ph or width % pw or tuple(true_shape.shape) != (batch, 2):
        raise ValueError(f"expected landscape images with sides divisible by {ph}, got {tuple(img.shape)}")
    portrait = true_shape[:, 1] < true_shape[:, 0]
    tokens = positions = None
    for select, transpose in ((~portrait, False), (portrait, True)):
        if not bool(select.any()):
            continue
        part = img[select].transpose(-1, -2) if transpose else img[select]
        projected = module.proj(part).flatten(2).transpose(1, 2)  # (b, rows * cols, D)
        grid = module.position_getter(1, part.shape[-2] // ph, part.shape[-1] // pw, img.device)
        if tokens is None:
            tokens = projected.new_empty((batch,) + tuple(projected.shape[1:]))
            positions = grid.new_empty((batch,) + tuple(grid.shape[1:]))
        tokens[select] = projected
        positions[select] = grid.expand(projected.shape[0], -1, -1)
    return module.norm(tokens), positions


def build_model(upstream, cfg_dict: dict, device, seed: int, state_dict: dict[str, np.ndarray] | None = None):
    """Upstream's Fast3R in eval mode on `device`: seeded random weights, or `state_dict` (strict)."""
    import torch

    torch.manual_seed(seed)
    model = upstream.Fast3R(**json.loads(json.dumps(cfg_dict)))
    if state_dict is not None:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state_dict.items()},
                              strict=True)
    return model.to(device).eval()


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# Running and timing.


def _autocast(device, dtype: str):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def make_inputs(num_views: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(N, 3, H, W) float32 images uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (num_views, 3, height, width)).astype(np.float32)


def _views(imgs, device):
    """Upstream's view dicts; `true_shape` stays on the host, as upstream's `inference` leaves it."""
    import torch

    imgs = torch.as_tensor(imgs, device=device)
    shape = torch.tensor([list(imgs.shape[2:])], dtype=torch.int64)
    return [dict(img=imgs[i:i + 1], true_shape=shape) for i in range(imgs.shape[0])]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Marks:
    """Timestamps taken by hooks on the encoder and the decoder during one forward (CUDA events or clock reads)."""

    def __init__(self, model, device):
        import torch

        self.cuda = device.type == "cuda"
        self._torch = torch
        self.marks: list[tuple[str, Any]] = []
        self.handles = [
            model.encoder.register_forward_pre_hook(lambda *a: self.mark("encoder_start")),
            model.encoder.register_forward_hook(lambda *a: self.mark("encoder_end")),
            model.decoder.register_forward_pre_hook(lambda *a: self.mark("fusion_start")),
            model.decoder.register_forward_hook(lambda *a: self.mark("fusion_end")),
        ]

    def mark(self, name: str) -> None:
        if self.cuda:
            event = self._torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def seconds(self, start: str, end: str) -> float:
        """From the first `start` mark to the last `end` mark."""
        a = next(v for k, v in self.marks if k == start)
        b = [v for k, v in self.marks if k == end][-1]
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _is_oom(err: BaseException) -> bool:
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _release(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_forward(model, device, num_views: int, height: int, width: int, dtype: str, repeats: int,
                 warmup: int = 1) -> dict[str, Any]:
    """Seconds (median) of a whole forward and of its encoder / fusion / heads parts; peak memory."""
    import torch

    views = _views(make_inputs(num_views, height, width), device)
    row: dict[str, Any] = dict(views=num_views, height=height, width=width)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), _autocast(device, dtype):
        start = time.perf_counter()
        for _ in range(max(warmup, 1)):
            model(views)
        _sync(device)
        row["warmup_s"] = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(views)
            _sync(device)
            times.append(time.perf_counter() - start)
        parts: dict[str, list[float]] = {"encoder_s": [], "fusion_s": [], "heads_s": []}
        for _ in range(repeats):
            marks = _Marks(model, device)
            try:
                marks.mark("start")
                model(views)
                marks.mark("end")
                _sync(device)
            finally:
                marks.remove()
            parts["encoder_s"].append(marks.seconds("encoder_start", "encoder_end"))
            parts["fusion_s"].append(marks.seconds("fusion_start", "fusion_end"))
            parts["heads_s"].append(marks.seconds("fusion_end", "end"))
    row["forward_s"] = statistics.median(times)
    row.update({k: statistics.median(v) for k, v in parts.items()})
    row["peak_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return row


def attention_kernels(model, device, height: int, width: int, dtype: str) -> list[str]:
    """Names of the attention ops and kernels one 2-view forward runs (from the PyTorch profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    views = _views(make_inputs(2, height, width), device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with torch.no_grad(), _autocast(device, dtype), profile(activities=activities) as prof:
            model(views)
            _sync(device)
    except Exception as err:  # the profiler is diagnostics only
        return [f"profiler failed: {type(err).__name__}: {err}"]
    words = ("attention", "flash", "fmha", "softmax")
    return sorted({e.name for e in prof.events() if any(w in e.name.lower() for w in words)})


def run_outputs(model, imgs: np.ndarray, device, dtype: str) -> dict[str, np.ndarray]:
    """Upstream's outputs for the views of `imgs` as float32 numpy, keyed 'v{i}/{output}'."""
    import torch

    with torch.no_grad(), _autocast(device, dtype):
        outs = model(_views(imgs, device))
    return {f"v{i}/{k}": out[k].detach().float().cpu().numpy() for i, out in enumerate(outs) for k in OUTPUT_KEYS}


def environment(device, model, kernels: list[str] | None) -> dict[str, Any]:
    import torch

    rope = model.encoder.rope
    env = dict(torch=torch.__version__, python=platform.python_version(), device_type=device.type,
               device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               cuda=torch.version.cuda, rope=f"{type(rope).__module__}.{type(rope).__name__}",
               attn_implementation=model.encoder_args.get("attn_implementation"))
    if kernels is not None:
        env["attention_kernels"] = kernels
        failed = any(k.startswith("profiler failed") for k in kernels)
        env["flash_attention_used"] = None if failed else any("flash" in k.lower() for k in kernels)
    if device.type == "cuda":
        env["sdpa_flash_enabled"] = torch.backends.cuda.flash_sdp_enabled()
    return env


# ---------------------------------------------------------------------------------------------------------------------
# Training: upstream's criterion, optimizer and step, as its Lightning module runs them.

ALPHA = 0.2  # configs/model/fast3r.yaml: train_criterion alpha
ADAMW = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)  # configs/model/fast3r.yaml: optimizer (torch.optim.AdamW)
CRITERION = "ConfLossMultiviewV2(Regr3DMultiviewV4(L21Loss(), norm_mode='avg_dis'), alpha=0.2)"

NOTE_DUST3R = ("upstream's losses import a top-level `dust3r` package (naver/dust3r, vendored by upstream as "
               "fast3r/dust3r): `dust3r` is served from fast3r/dust3r")
NOTE_DUST3R_INFERENCE = ("dust3r.inference could not be imported ({error}): a stand-in provides find_opt_scaling and "
                         "get_pred_pts3d, which fast3r/dust3r/losses.py imports for criteria not used here (they "
                         "raise if called)")
NOTE_IMAGE_IDS = ("training image ids are given, not drawn: on this model instance Fast3RDecoder._get_random_image_pos "
                  "(a torch.randperm per sample from a generator seeded by torch's global RNG) is replaced by a lookup "
                  "of the given (B, V) ids in upstream's image_idx_emb table, laid out as upstream lays it out")
NOTE_TRAIN_STEP = ("step as MultiViewDUSt3RLitModule.model_step under Lightning's automatic optimisation: train mode, "
                   "forward and criterion under the run's autocast (none in float32), the criterion inside upstream's "
                   "float32 autocast, backward, torch.optim.AdamW(lr, betas (0.9, 0.95), weight decay 0.05, every "
                   "parameter); no gradient clipping (none configured); grad_norm is the global L2 norm of the "
                   "gradients before the update; " + CRITERION)


def load_criterion(root: str | os.PathLike, alpha: float = ALPHA) -> tuple[Any, list[str]]:
    """Upstream's training criterion (configs/model/fast3r.yaml: train_criterion) and notes on how it was loaded.

    Call after `load_upstream(root)`, which puts the checkout on the import path.
    """
    root = pathlib.Path(root).resolve()
    notes = [NOTE_DUST3R]
    if "dust3r" in sys.modules:
        raise RuntimeError("a module named 'dust3r' is already imported")
    _package_without_init("dust3r", root / "fast3r" / "dust3r")
    try:
        importlib.import_module("dust3r.inference")
    except ImportError as err:  # tqdm missing: the two names are imported for other criteria only
        sys.modules.pop("dust3r.inference", None)
        sys.modules["dust3r.inference"] = _unused_stand_in("dust3r.inference", ("find_opt_scaling", "get_pred_pts3d"))
        notes.append(NOTE_DUST3R_INFERENCE.format(error=f"{type(err).__name__}: {err}"))
    losses = importlib.import_module("fast3r.dust3r.losses")
    criterion = losses.ConfLossMultiviewV2(losses.Regr3DMultiviewV4(losses.L21Loss(), norm_mode="avg_dis"),
                                           alpha=alpha)
    return criterion, notes + [NOTE_TRAIN_STEP]


def _unused_stand_in(name: str, attrs: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr in attrs:
        def unused(*args, _name=f"{name}.{attr}", **kwargs):
            raise NotImplementedError(f"{_name} is a stand-in: the module could not be imported")
        setattr(module, attr, unused)
    return module


def feed_image_ids(model) -> Callable[[np.ndarray], None]:
    """Makes the fusion transformer draw no training image ids but take them from the returned setter.

    The setter takes (B, V) integer ids (view 0 gets 0, as upstream draws them); upstream's random-id path is
    switched on, as upstream trains (random_image_idx_embedding), and its lookup is kept: row ids[b, i] of the
    sinusoidal table, repeated over view i's patches, views concatenated along the patch axis.
    """
    import torch

    decoder = model.decoder
    decoder.random_image_idx_embedding = True
    current: dict[str, Any] = {}

    def image_pos(encoded_feats, batch_size, num_views, max_image_idx, device):
        ids = current.get("ids")
        if ids is None or tuple(ids.shape) != (batch_size, num_views):
            raise ValueError(f"set ({batch_size}, {num_views}) image ids first, have "
                             f"{None if ids is None else tuple(ids.shape)}")
        table = decoder.image_idx_emb  # (num_ids, D)
        return torch.cat([table[ids[:, i].to(table.device)].unsqueeze(1).repeat(1, feats.shape[1], 1)
                          for i, feats in enumerate(encoded_feats)], dim=1)  # (B, P_total, D)

    decoder._get_random_image_pos = image_pos  # instance attribute: shadows the method for this model only

    def set_ids(ids: np.ndarray) -> None:
        current["ids"] = torch.as_tensor(np.asarray(ids, np.int64))

    return set_ids


def training_views(batch: list[dict[str, np.ndarray]], device) -> list[dict[str, Any]]:
    """Upstream's training views from a batch in the loader's format; `true_shape` stays on the host, where
    upstream's collated batches keep it (model_step moves only the pixel and pose tensors)."""
    import torch

    return [{k: torch.as_tensor(v[k]) if k == "true_shape" else torch.as_tensor(v[k]).to(device)
             for k in ("img", "true_shape", "pts3d", "valid_mask", "camera_pose")} for v in batch]


def make_adamw(model, lr: float = ADAMW["lr"]):
    """torch.optim.AdamW over every parameter, as upstream's configure_optimizers builds it."""
    import torch

    return torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAMW["betas"], weight_decay=ADAMW["weight_decay"])


def train_step(model, criterion, optimizer, views, device, dtype: str, lr: float | None = None) -> dict[str, Any]:
    """One optimizer step as upstream trains (NOTE_TRAIN_STEP); `lr` overrides the learning rate of this step.

    Returns loss, grad_norm and the criterion's per-view terms under our names (`pts3d_loss_global/00`, ...).
    """
    import torch

    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
        preds = model(views)
        with torch.autocast(device_type=device.type, dtype=torch.float32):  # upstream: "loss in higher precision"
            loss, details = criterion(views, preds)
    loss.backward()
    norms = [torch.linalg.vector_norm(p.grad.float()) for p in model.parameters() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack(norms))
    optimizer.step()
    terms = {key.split("_", 1)[1]: float(value) for key, value in details.items()}  # drop the class-name prefix
    return dict(loss=float(loss), grad_norm=float(grad_norm), **terms)


def random_batch(num_views: int, height: int, width: int, batch: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """A batch in the loader's format (landscape views) with random images and points (for timing)."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(num_views):
        pose = np.tile(np.eye(4, dtype=np.float32), (batch, 1, 1))  # (B, 4, 4)
        pose[:, :3, 3] = rng.normal(size=(batch, 3))
        views.append(dict(
            img=rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32),
            true_shape=np.tile(np.asarray([[height, width]], np.int32), (batch, 1)),
            pts3d=rng.normal(size=(batch, height, width, 3)).astype(np.float32),
            valid_mask=np.ones((batch, height, width), bool),
            camera_pose=pose))
    return views


SCENE_KEYS = ("img", "true_shape", "pts3d", "valid_mask", "camera_pose")


def scene_batch(data: dict[str, np.ndarray], step: int) -> list[dict[str, np.ndarray]]:
    """Step `step`'s batch of a training-parity data file: samples `order[step]` of its (S, V, ...) scene arrays,
    as V view dicts of (B, ...) arrays in the loader's format."""
    rows = data["order"][step]  # (B,)
    return [{k: np.ascontiguousarray(data[k][rows, v]) for k in SCENE_KEYS} for v in range(data["img"].shape[1])]


def largest_fitting(trains: Callable[[int], bool], fits: int, step: int, limit: int) -> dict[str, Any]:
    """The largest view count that trains, searched above `fits` (known to train) in multiples of `step` up to
    `limit`: doubling until the first failure, then bisection (assumes failures are monotone in N, as memory is).

    Returns {'largest': N, 'tried': {N: trained}, 'limit_reached': whether `limit` itself trained}.
    """
    if step < 1 or fits < 1:
        raise ValueError(f"need step >= 1 and a view count that trains, got step={step}, fits={fits}")
    tried: dict[int, bool] = {}
    good, bad = fits, None
    while bad is None:
        n = min(max(2 * good // step * step, good + step), limit)
        if n <= good:
            return dict(largest=good, tried=tried, limit_reached=True)
        tried[n] = bool(trains(n))
        good, bad = (n, None) if tried[n] else (good, n)
    while True:
        mid = (good + bad) // 2 // step * step
        if mid <= good:
            return dict(largest=good, tried=tried, limit_reached=False)
        tried[mid] = bool(trains(mid))
        good, bad = (mid, bad) if tried[mid] else (good, mid)


def time_train_step(model, criterion, optimizer, device, num_views: int, height: int, width: int, batch: int,
                    dtype: str, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Seconds per training step (median of `repeats` after `warmup`, synchronized; None for no repeats) and peak
    memory."""
    import torch

    views = training_views(random_batch(num_views, height, width, batch), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        result = train_step(model, criterion, optimizer, views, device, dtype)
    _sync(device)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = train_step(model, criterion, optimizer, views, device, dtype)  # float(loss) synchronizes
        _sync(device)
        times.append(time.perf_counter() - start)
    if not math.isfinite(result["loss"]):
        raise FloatingPointError(f"non-finite loss {result['loss']} at N={num_views}")
    step_s = statistics.median(times) if times else None  # repeats=0: whether it trains, untimed
    return dict(views=num_views, height=height, width=width, batch=batch, warmup_s=warmup_s, step_s=step_s,
                images_per_s=batch * num_views / step_s if step_s else None, loss=result["loss"],
                peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)


def train_timing(upstream, args, device, notes: list[str]) -> dict[str, Any]:
    """Upstream's training step at each of --train-views, then (--max-views) the largest view count that trains."""
    cfg = getattr(config_lib, args.config)()
    width, height = (int(x) for x in args.size.split("x"))
    criterion, criterion_notes = load_criterion(args.root)
    notes.extend(criterion_notes)
    model = build_model(upstream, upstream_config(cfg, args.attention), device, args.seed).train()
    optimizer = make_adamw(model)
    env = environment(device, model, attention_kernels(model, device, height, width, args.dtype))
    print(json.dumps(env), flush=True)

    def run(n: int, repeats: int) -> dict[str, Any]:
        try:
            return time_train_step(model, criterion, optimizer, device, n, height, width, args.batch, args.dtype,
                                   repeats)
        except Exception as err:
            if not _is_oom(err):
                raise
            message = str(err).splitlines()[0][:300]
        optimizer.zero_grad(set_to_none=True)
        _release(device)
        return dict(views=n, oom=True, error=message)

    rows = []
    print(f"{'N':>5} {'step s':>8} {'img/s':>8} {'peak GiB':>9}", flush=True)
    for n in args.train_views:
        row = run(n, args.repeats)
        rows.append(row)
        if row.get("oom"):
            print(f"{n:>5} out of memory", flush=True)
        else:
            peak = row["peak_bytes"] / 2**30 if row["peak_bytes"] else math.nan
            print(f"{n:>5} {row['step_s']:>8.3f} {row['images_per_s']:>8.1f} {peak:>9.2f}", flush=True)
        _release(device)
    result: dict[str, Any] = dict(env=env, rows=rows, dtype=args.dtype, batch=args.batch)
    fitted = [r["views"] for r in rows if not r.get("oom")]
    if args.max_views and fitted:
        search = largest_fitting(lambda n: not run(n, 0).get("oom"), max(fitted), args.max_views_step,
                                 args.max_views_limit)
        result["max_views"] = search
        print(f"largest view count that trains: {search['largest']}"
              + (f" (the limit, {args.max_views_limit})" if search["limit_reached"] else ""), flush=True)
    return result


def train_parity_runs(upstream, args, device, notes: list[str]) -> dict[str, Any]:
    """Runs the training plan in --train-parity DIR (written by benchmarks/train_parity.py): per run, upstream's
    steps from the same initial weights on the data file's batches with the run's image ids and learning rates."""
    import torch

    run_dir = pathlib.Path(args.train_parity)
    plan = json.loads((run_dir / "plan.json").read_text())
    criterion, criterion_notes = load_criterion(args.root, plan["alpha"])
    notes.extend(criterion_notes + [NOTE_IMAGE_IDS])
    with np.load(run_dir / "data.npz") as z:
        data = {k: z[k] for k in z.files}
    initial = None
    if plan["init_weights"]:
        with np.load(plan["init_weights"]) as z:
            initial = {k: z[k] for k in z.files}
    if initial is None:
        initial = state_dict_numpy(build_model(upstream, plan["upstream_config"], torch.device("cpu"), plan["seed"]))
        np.savez(run_dir / "state_dict.npz", **initial)
    if device.type == "cuda":  # float32 matmuls and convolutions in float32 (attention: see the notes)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    runs = {}
    for run in plan["runs"]:
        if run["dtype"] == "bfloat16" and device.type == "cpu" and not _cpu_bf16_autocast_ok():
            runs[run["name"]] = dict(skipped="CPU autocast does not support bfloat16 here")
            continue
        torch.manual_seed(plan["seed"])  # nothing else in the step draws: dropout rates are 0
        model = build_model(upstream, plan["upstream_config"], device, plan["seed"], initial).train()
        set_ids = feed_image_ids(model)
        optimizer = make_adamw(model)
        steps = []
        start = time.perf_counter()
        for step, lr in enumerate(plan["lrs"]):
            set_ids(data[f"ids/{run['ids']}"][step])
            views = training_views(scene_batch(data, step), device)
            steps.append(train_step(model, criterion, optimizer, views, device, run["dtype"], lr))
        runs[run["name"]] = dict(dtype=run["dtype"], ids=run["ids"], steps=steps,
                                 seconds=time.perf_counter() - start)
        print(f"upstream {run['name']}: {len(steps)} steps in {runs[run['name']]['seconds']:.1f} s, loss "
              f"{steps[0]['loss']:.5f} -> {steps[-1]['loss']:.5f}", flush=True)
        del model, optimizer
        _release(device)
    return dict(runs=runs, commit=_git_commit(args.root),
                env=dict(torch=torch.__version__, python=platform.python_version(), device=str(device)))


def _git_commit(root: str | os.PathLike) -> str | None:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None


# ---------------------------------------------------------------------------------------------------------------------


def _resolve_weights(args) -> tuple[config_lib.Fast3RConfig, dict[str, np.ndarray] | None, str]:
    """(config, upstream state dict or None for random weights, description) for the comparison."""
    if args.torch_checkpoint:
        from fast3r_jax.convert.converter import resolve_config
        from fast3r_jax.convert.readers import load_state_dict

        src = pathlib.Path(args.torch_checkpoint)
        own = src.is_dir() and (src / "config.json").is_file()
        cfg = resolve_config(src, None if own else args.config)
        state_dict, layout = load_state_dict(src)
        if layout == "dust3r":
            raise ValueError(f"{src} is a DUSt3R checkpoint: it does not hold a whole Fast3R model")
        return cfg, state_dict, f"upstream checkpoint {src} ({layout})"
    if args.checkpoint:
        from fast3r_jax.checkpoint import load_pretrained
        from fast3r_jax.convert.table import params_to_torch

        cfg, params = load_pretrained(args.checkpoint)
        return cfg, params_to_torch(params, cfg), f"converted checkpoint {args.checkpoint} (params_to_torch)"
    return getattr(config_lib, args.config)(), None, f"random weights (torch.manual_seed({args.seed}))"


def compare_outputs(upstream, args, device, notes: list[str]) -> dict[str, Any]:
    """Writes inputs, upstream's outputs per dtype, and (random weights) the state dict to --compare-dir."""
    import torch

    out_dir = pathlib.Path(args.compare_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, state_dict, source = _resolve_weights(args)
    model = build_model(upstream, upstream_config(cfg, args.attention), torch.device("cpu"), args.seed, state_dict)
    model.decoder.random_image_idx_embedding = False  # sequential ids 0..N-1 (the same in both implementations)
    if state_dict is None:
        np.savez(out_dir / "state_dict.npz", **state_dict_numpy(model))
    width, height = (int(x) for x in args.size.split("x"))
    imgs = make_inputs(args.compare_views, height, width, seed=args.seed + 1)
    np.savez(out_dir / "inputs.npz", imgs=imgs)
    runs = []
    for dtype in args.compare_dtypes:
        dev = torch.device(args.fp32_device) if dtype == "float32" and args.fp32_device else device
        if dtype == "bfloat16" and dev.type == "cpu" and not _cpu_bf16_autocast_ok():
            runs.append(dict(dtype=dtype, device=str(dev), skipped="CPU autocast does not support bfloat16 here"))
            continue
        _move(model, dev)
        start = time.perf_counter()
        outputs = run_outputs(model, imgs, dev, dtype)
        np.savez(out_dir / f"torch_{dtype}.npz", **outputs)
        runs.append(dict(dtype=dtype, device=str(dev), seconds=time.perf_counter() - start,
                         file=f"torch_{dtype}.npz"))
        print(f"upstream outputs {dtype} on {dev}: {runs[-1]['seconds']:.2f} s", flush=True)
    _move(model, torch.device("cpu"))
    meta = dict(config=cfg.to_dict(), weights=source, views=args.compare_views, height=height, width=width,
                image_ids="sequential", runs=runs, state_dict="state_dict.npz" if state_dict is None else None)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _move(model, device) -> None:
    """model.to(device), dropping upstream's patch-position caches, which are keyed by shape only and would keep
    tensors on the previous device."""
    model.to(device)
    for module in model.modules():
        getter = getattr(module, "position_getter", None)
        if getter is not None and hasattr(getter, "cache_positions"):
            getter.cache_positions.clear()


def _cpu_bf16_autocast_ok() -> bool:
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    except Exception:
        return False


def run_child(command: list[str], out: pathlib.Path) -> dict:
    """Runs an upstream PyTorch child process (JAX kept on the CPU there, so the device is upstream's alone) and
    returns the JSON it wrote to `out`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    print("upstream PyTorch run: " + shlex.join(command), flush=True)
    proc = subprocess.run(command, env=env, check=False)
    if proc.returncode or not out.is_file():
        raise SystemExit(f"upstream PyTorch run failed (exit status {proc.returncode})")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="local checkout of facebookresearch/fast3r")
    parser.add_argument("--config", default="large", choices=["large", "tiny"])
    parser.add_argument("--views", type=int, nargs="*", default=[2, 8, 32], help="view counts to time (none: skip)")
    parser.add_argument("--size", default="512x384", help="WxH of every view")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default="flash_attention", choices=ATTENTION,
                        help="upstream attn_implementation (the released model's: flash_attention)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--compare-dir", default=None, help="write inputs and upstream outputs here for comparison")
    parser.add_argument("--compare-views", type=int, default=4)
    parser.add_argument("--compare-dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--fp32-device", default="cpu",
                        help="device of the float32 reference run ('' = --device): upstream's CUDA attention is "
                             "bf16 even in float32")
    parser.add_argument("--torch-checkpoint", default=None, help="compare with these upstream weights")
    parser.add_argument("--checkpoint", default=None, help="compare with a converted fast3r-jax checkpoint's weights")
    parser.add_argument("--train-views", type=int, nargs="*", default=[],
                        help="time upstream's training step at these view counts")
    parser.add_argument("--batch", type=int, default=1, help="samples per training step")
    parser.add_argument("--max-views", action="store_true",
                        help="after --train-views, search the largest view count that trains")
    parser.add_argument("--max-views-step", type=int, default=4, help="granularity of that search")
    parser.add_argument("--max-views-limit", type=int, default=1024, help="upper end of that search")
    parser.add_argument("--train-parity", default=None,
                        help="run the training plan in this folder (written by benchmarks/train_parity.py)")
    args = parser.parse_args(argv)
    # fast3r_jax serves configs and file reading here: JAX stays off the accelerator, which the model uses
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    upstream, notes = load_upstream(args.root)
    for note in notes:
        print(f"upstream: {note}", flush=True)
    width, height = (int(x) for x in args.size.split("x"))
    result: dict[str, Any] = dict(notes=notes, rows=[], dtype=args.dtype)

    if args.views:
        cfg = getattr(config_lib, args.config)()
        model = build_model(upstream, upstream_config(cfg, args.attention), device, args.seed)
        kernels = attention_kernels(model, device, height, width, args.dtype)
        result["env"] = environment(device, model, kernels)
        print(json.dumps(result["env"]), flush=True)
        print(f"{'N':>5} {'forward s':>10} {'enc s':>8} {'fusion s':>9} {'heads s':>8} {'peak GiB':>9}", flush=True)
        for n in args.views:
            try:
                row = time_forward(model, device, n, height, width, args.dtype, args.repeats, args.warmup)
            except Exception as err:
                if not _is_oom(err):
                    raise
                row = dict(views=n, height=height, width=width, oom=True, error=str(err).splitlines()[0][:300])
                del err
                _release(device)
                print(f"{n:>5} out of memory", flush=True)
                result["rows"].append(row)
                continue
            result["rows"].append(row)
            peak = row["peak_bytes"] / 2**30 if row["peak_bytes"] else math.nan
            print(f"{n:>5} {row['forward_s']:>10.4f} {row['encoder_s']:>8.4f} {row['fusion_s']:>9.4f} "
                  f"{row['heads_s']:>8.4f} {peak:>9.2f}", flush=True)
            _release(device)
        fitted = [r["views"] for r in result["rows"] if not r.get("oom")]
        result["largest_views_fitted"] = max(fitted) if fitted else None
        del model
        _release(device)
    if args.compare_dir:
        result["compare"] = compare_outputs(upstream, args, device, notes)
        if "env" not in result:
            result["env"] = dict(torch=torch.__version__, device_type=device.type)
    if args.train_views:
        result["train"] = train_timing(upstream, args, device, notes)
    if args.train_parity:
        result["train_parity"] = train_parity_runs(upstream, args, device, notes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
