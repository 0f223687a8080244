"""Every configuration as data, and the one loader of config files.

Model: Fast3RConfig (EncoderConfig, FusionConfig, HeadConfig) and its presets (PRESETS: the released ViT-L, the
reference tiny model). Training: TrainConfig (DataConfig, OptimizerConfig). Files: `load_config_file(spec)` reads a
preset name, a Python file with `get_config()` (`path.py`, or `path.py:variant` for `get_config("variant")`, as
big_vision's configs), or a `config.json` (ours or upstream's). Every value read from a file or a command line is
checked against its field's type (`from_dict`): booleans must be booleans, integers integers, floats accept
integers; wrong types and unknown keys raise InputError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import types
import typing
from typing import Any, Callable, Mapping, TypeVar, Union

from fast3r_jax.errors import InputError

# Upstream's inference-time attention temperature for the fusion transformer: logits are scaled by
# head_dim**-0.5 * sqrt(log(137) / log(20)) in eval mode (trained on ~20 views, evaluated on longer sequences).
INFERENCE_SCALE_FACTOR = math.sqrt(math.log(137) / math.log(20))

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
DECAY_MASKS = ("all", "matrices")
# What a rematerialised block keeps for the backward pass (fast3r_jax.model.transformer.REMAT_POLICIES): nothing
# (everything recomputed), every matmul output, or the matmul outputs without batch dimensions (the projections
# and MLP layers, not attention scores).
REMAT_POLICIES = ("full", "dots", "dots_no_batch")

T = TypeVar("T")

# ----------------------------------------------------------------------------
# Strict typed construction from plain data (JSON, command-line literals).
# ----------------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
             type(None): "null/None"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} mapping"
    args = typing.get_args(hint)
    if args and args[-1] is Ellipsis:
        return f"a list of {_type_name(args[0])}"
    return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})" if args else "a list"


def check_value(value: Any, hint: Any, source: str, field: str) -> Any:
    """`value` as field type `hint` (lists become tuples, integers become floats for float fields); InputError
    naming `source` and `field` if it is not one. No other conversion: "false" is not a boolean, 96.9 not an int."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is not type(None):
                try:
                    return check_value(value, option, source, field)
                except InputError:
                    pass
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return from_dict(hint, value, source, f"{field}.")
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis:
                return tuple(check_value(v, args[0], source, f"{field}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(check_value(v, a, source, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    else:
        raise TypeError(f"{field}: field type {hint!r} is not supported by check_value")
    raise InputError(f"{source}: {field}: expected {_type_name(hint)}, got {value!r}")


def from_dict(cls: type[T], data: Any, source: str, prefix: str = "") -> T:
    """Builds dataclass `cls` from a mapping, strictly: every key a field, every value of its field's type (nested
    dataclasses from nested mappings). Errors name `source` (a file, '--set') and the dotted field."""
    if not isinstance(data, Mapping):
        raise InputError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping of {cls.__name__} "
                         f"fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        raise InputError(f"{source}: unknown {cls.__name__} fields {[prefix + k for k in unknown]} "
                         f"(known: {', '.join(fields)})")
    values = {key: check_value(value, hints[key], source, prefix + key) for key, value in data.items()}
    try:
        return cls(**values)
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


def check_fields(cfg: Any, source: str, prefix: str = "") -> None:
    """Checks every field of a dataclass built in Python (a config file's get_config()) against its type, as
    `from_dict` checks data read from JSON; InputError names `source` and the field."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, hints[f.name]):
            check_fields(value, source, f"{prefix}{f.name}.")
        else:
            check_value(value, hints[f.name], source, prefix + f.name)


# ----------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """CroCo ViT encoder: patch embedding, 2D RoPE, pre-norm blocks, final norm."""

    patch_size: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    depth: int = 24
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    norm_eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Fusion transformer over the tokens of all views (upstream's "decoder")."""

    embed_dim: int = 1024
    num_heads: int = 16
    depth: int = 24
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    block_norm_eps: float = 1e-5  # upstream passes plain nn.LayerNorm to the blocks
    final_norm_eps: float = 1e-6
    num_image_ids: int = 1000  # rows of the sinusoidal image-index table the model was trained with
    random_image_ids: bool = True  # draw ids 0, then distinct ids from 1..num_image_ids-1 (upstream default)
    inference_attention_scale: bool = True  # upstream's attn_bias_for_inference_enabled


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """DPT heads: global (pointmap in view 0's frame) and local (pointmap in the view's own frame)."""

    feature_dim: int = 256
    last_dim: int = 128
    layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    depth_mode: tuple[str, float, float] = ("exp", -math.inf, math.inf)
    conf_mode: tuple[str, float, float] = ("exp", 1.0, math.inf)
    landscape_only: bool = True
    with_local_head: bool = True


@dataclasses.dataclass(frozen=True)
class Fast3RConfig:
    encoder: EncoderConfig = EncoderConfig()
    fusion: FusionConfig = FusionConfig()
    head: HeadConfig = HeadConfig()
    attention: str = "auto"  # 'auto' (cudnn on GPU in 16-bit, splash on TPU, else xla), 'xla', 'cudnn', 'splash'
    remat: bool = False  # rematerialise each transformer block in the backward pass
    remat_policy: str = "full"  # with remat: what each block keeps for the backward pass (REMAT_POLICIES)
    # run each layer stack as one lax.scan (compile time flat in depth) or unrolled, one block after another (XLA
    # may then fuse across blocks; no loop-carried copies); the parameters are stacked either way. Unrolled, the ViT-L
    # training step at 20 views took 0.387 s instead of 0.43 s and 42 instead of 61 GiB on an H200, at twice the compile
    # time (README, Training); inference keeps the scan, whose unrolled speed is not measured
    scan_layers: bool = True
    # long side of the images the model was trained at (upstream's img_size): the default input size of
    # `fast3r-jax reconstruct` and the demo, where the model does best
    image_size: int = 512

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise InputError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise InputError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        for name, dim, heads in (("encoder", self.encoder.embed_dim, self.encoder.num_heads),
                                 ("fusion", self.fusion.embed_dim, self.fusion.num_heads)):
            if heads < 1 or dim % heads:
                raise InputError(f"{name}: embed_dim {dim} is not divisible by num_heads {heads}")
        if (self.encoder.embed_dim // self.encoder.num_heads) % 4:
            raise InputError("encoder head_dim must be a multiple of 4 for 2D RoPE")
        if self.fusion.depth < 4:
            raise InputError(f"fusion depth must be >= 4 for the DPT hooks, got {self.fusion.depth}")
        if self.image_size < self.encoder.patch_size or self.image_size % self.encoder.patch_size:
            raise InputError(f"image_size must be a positive multiple of the patch size {self.encoder.patch_size}, "
                             f"got {self.image_size}")

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """Indices into the fusion output list read by the DPT heads (0 = encoder tokens)."""
        depth = self.fusion.depth
        return (0, depth * 2 // 4, depth * 3 // 4, depth)

    def replace(self, **kwargs) -> "Fast3RConfig":
        return dataclasses.replace(self, **kwargs)

    def architecture(self) -> "Fast3RConfig":
        """This config with the settings that leave the parameters as they are (how it runs, the size it was trained
        at: RUNTIME_FIELDS) at their defaults: configs of equal architecture share parameters (fine-tuning)."""
        return self.replace(**{name: FIELD_DEFAULTS[name] for name in RUNTIME_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Any, source: str = "Fast3RConfig") -> "Fast3RConfig":
        """Strictly typed (see `from_dict`); errors name `source`."""
        return from_dict(cls, d, source)

    @classmethod
    def from_json(cls, text: str, source: str = "config.json") -> "Fast3RConfig":
        return cls.from_dict(_parse_json(text, source), source)


RUNTIME_FIELDS = ("attention", "remat", "remat_policy", "scan_layers", "image_size")
FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Fast3RConfig)}


def large() -> Fast3RConfig:
    """The released Fast3R_ViT_Large_512: ViT-L encoder, 24-block 1024-wide fusion transformer, two DPT heads."""
    return Fast3RConfig()


def tiny() -> Fast3RConfig:
    """The reference tiny config used for parity tests (embed 96/64, depth 2/10)."""
    return Fast3RConfig(
        encoder=EncoderConfig(embed_dim=96, num_heads=3, depth=2),
        fusion=FusionConfig(embed_dim=64, num_heads=4, depth=10),
    )


PRESETS: dict[str, Callable[[], Fast3RConfig]] = {"large": large, "tiny": tiny}

# ----------------------------------------------------------------------------
# Upstream's config.json.
# ----------------------------------------------------------------------------

_ENCODER_IGNORED = {"encoder_type", "patch_embed_cls", "attn_implementation", "pos_embed"}
_FUSION_IGNORED = {"decoder_type", "enc_embed_dim", "attn_implementation", "drop", "attn_drop"}
_HEAD_IGNORED = {"head_type", "output_mode", "patch_size"}
_SECTIONS = ("encoder_args", "decoder_args", "head_args")


def from_upstream(d: Any, source: str = "upstream config") -> Fast3RConfig:
    """Builds a config from an upstream `config.json` dict (encoder_args / decoder_args / head_args).

    Every upstream key is either mapped, checked to be a value we implement, or is a PyTorch kernel choice with
    the same math (attn_implementation); anything else, and any value of the wrong type, raises InputError naming
    `source` and the key, so no setting is silently dropped or misread.
    """
    if not isinstance(d, Mapping):
        raise InputError(f"{source}: expected a JSON object with {', '.join(_SECTIONS)}, got {type(d).__name__}")
    missing = set(_SECTIONS) - set(d)
    if missing:
        raise InputError(f"{source}: upstream config is missing {sorted(missing)}")
    unknown_top = set(d) - {*_SECTIONS, "freeze"}
    if unknown_top:
        raise InputError(f"{source}: unknown upstream config keys: {sorted(unknown_top)}")
    for section in _SECTIONS:
        if not isinstance(d[section], Mapping):
            raise InputError(f"{source}: {section} must be a JSON object, got {d[section]!r}")
    enc, dec, head = (dict(d[section]) for section in _SECTIONS)

    def get(args: Mapping, section: str, key: str, hint: Any, default: Any = None) -> Any:
        value = args.get(key, default)
        return check_value(value, hint, source, f"{section}.{key}")

    _expect(enc, source, "encoder_args", "encoder_type", "croco")
    _expect(enc, source, "encoder_args", "patch_embed_cls", "ManyAR_PatchEmbed")
    pos_embed = get(enc, "encoder_args", "pos_embed", str, "RoPE100")
    try:
        rope_base = float(pos_embed[len("RoPE"):]) if pos_embed.startswith("RoPE") else None
    except ValueError:
        rope_base = None
    if rope_base is None:
        raise InputError(f"{source}: encoder_args.pos_embed={pos_embed!r}: only RoPE<base> is supported")
    _expect(dec, source, "decoder_args", "decoder_type", "fast3r")
    for key in ("drop", "attn_drop"):
        if get(dec, "decoder_args", key, float, 0.0) != 0.0:
            raise InputError(f"{source}: decoder_args.{key}={dec[key]} is not supported (the released model uses 0)")
    _expect(head, source, "head_args", "head_type", "dpt")
    _expect(head, source, "head_args", "output_mode", "pts3d")

    enc_known = _ENCODER_IGNORED | {"img_size", "patch_size", "embed_dim", "num_heads", "depth", "mlp_ratio"}
    dec_known = _FUSION_IGNORED | {"random_image_idx_embedding", "embed_dim", "num_heads", "depth", "mlp_ratio",
                                   "qkv_bias", "attn_bias_for_inference_enabled"}
    head_known = _HEAD_IGNORED | {"landscape_only", "depth_mode", "conf_mode", "with_local_head"}
    for name, args, known in (("encoder_args", enc, enc_known), ("decoder_args", dec, dec_known),
                              ("head_args", head, head_known)):
        extra = set(args) - known
        if extra:
            raise InputError(f"{source}: unsupported upstream {name}: {sorted(map(str, extra))}")

    patch_size = get(enc, "encoder_args", "patch_size", int, 16)
    if get(head, "head_args", "patch_size", int, patch_size) != patch_size:
        raise InputError(f"{source}: head_args.patch_size must equal encoder_args.patch_size")
    if patch_size != 16:
        raise InputError(f"{source}: patch_size={patch_size}: the DPT head is defined for patch size 16")
    enc_dim = get(enc, "encoder_args", "embed_dim", int, 768)
    if get(dec, "decoder_args", "enc_embed_dim", int, enc_dim) != enc_dim:
        raise InputError(f"{source}: decoder_args.enc_embed_dim={dec['enc_embed_dim']} != "
                         f"encoder_args.embed_dim={enc_dim}")
    if not get(head, "head_args", "with_local_head", bool, False):
        raise InputError(f"{source}: head_args.with_local_head=False is not supported: Fast3R predicts global and "
                         "local maps")
    if "random_image_idx_embedding" not in dec:
        raise InputError(f"{source}: decoder_args.random_image_idx_embedding is missing")
    if not head.get("conf_mode"):
        raise InputError(f"{source}: head_args.conf_mode must be set: Fast3R predicts confidences")
    if "depth_mode" not in head:
        raise InputError(f"{source}: head_args.depth_mode is missing")
    mode = tuple[str, float, float]
    depth_mode = _mode(get(head, "head_args", "depth_mode", mode), source, "depth_mode", ("exp", "linear", "square"))
    conf_mode = _mode(get(head, "head_args", "conf_mode", mode), source, "conf_mode", ("exp", "sigmoid"))
    image_size = get(enc, "encoder_args", "img_size", int | tuple[int, int], 512)  # 512 or (height, width)
    image_size = max(image_size) if isinstance(image_size, tuple) else image_size

    try:
        return Fast3RConfig(
            encoder=EncoderConfig(
                patch_size=patch_size,
                embed_dim=enc_dim,
                num_heads=get(enc, "encoder_args", "num_heads", int, 12),
                depth=get(enc, "encoder_args", "depth", int, 12),
                mlp_ratio=get(enc, "encoder_args", "mlp_ratio", float, 4.0),
                rope_base=rope_base,
            ),
            fusion=FusionConfig(
                embed_dim=get(dec, "decoder_args", "embed_dim", int, 768),
                num_heads=get(dec, "decoder_args", "num_heads", int, 12),
                depth=get(dec, "decoder_args", "depth", int, 12),
                mlp_ratio=get(dec, "decoder_args", "mlp_ratio", float, 4.0),
                qkv_bias=get(dec, "decoder_args", "qkv_bias", bool, True),
                random_image_ids=get(dec, "decoder_args", "random_image_idx_embedding", bool),
                inference_attention_scale=get(dec, "decoder_args", "attn_bias_for_inference_enabled", bool, True),
            ),
            head=HeadConfig(
                depth_mode=depth_mode,
                conf_mode=conf_mode,
                landscape_only=get(head, "head_args", "landscape_only", bool, True),
                with_local_head=True,
            ),
            image_size=image_size,
        )
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


def _expect(args: Mapping[str, Any], source: str, section: str, key: str, value: str) -> None:
    got = args.get(key, value)
    if got != value:
        raise InputError(f"{source}: {section}.{key}={got!r} is not supported (expected {value!r})")


def _mode(mode: tuple[str, float, float], source: str, name: str,
          allowed: tuple[str, ...]) -> tuple[str, float, float]:
    if mode[0] not in allowed:
        raise InputError(f"{source}: head_args.{name}={list(mode)!r}: mode must be one of {allowed}")
    if name == "depth_mode" and mode[1:] != (-math.inf, math.inf):
        raise InputError(f"{source}: head_args.depth_mode={list(mode)!r}: bounded depth modes are not supported "
                         "(upstream asserts none)")
    return mode


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up and cosine decay (see fast3r_jax.train.optimizer)."""

    lr: float = 1e-4  # peak learning rate
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_steps: int = 1000  # linear warm-up from 0 to lr
    total_steps: int = 100_000  # warm-up + cosine
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.05
    decay_mask: str = "all"  # 'all' (upstream) or 'matrices' (no decay on biases / norm scales)
    grad_clip_norm: float | None = None  # global-norm clipping; upstream does not clip

    def __post_init__(self):
        if self.decay_mask not in DECAY_MASKS:
            raise InputError(f"decay_mask must be one of {DECAY_MASKS}, got {self.decay_mask!r}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise InputError(f"need 0 <= warmup_steps ({self.warmup_steps}) <= total_steps ({self.total_steps})")


@dataclasses.dataclass(frozen=True)
class RenderedDataConfig:
    """Synthetic scenes drawn on the host and ray cast on the accelerator (fast3r_jax.data.rendered): per batch,
    one (views, samples) bucket and one resolution. Scenes are those of `synthetic(seed=TrainConfig.seed, ...)`."""

    num_scenes: int = 1_000_000  # scene indices cycle through this many
    split: str = "train"
    hole_fraction: float = 0.0
    focal_range: tuple[float, float] = (0.8, 1.2)
    # per sample, how far along its camera path the views reach, as a fraction of the default (one 6-16 degree step
    # per view), drawn log-uniformly from this range: below 1, views closer together than one step
    span_fraction: tuple[float, float] = (1.0, 1.0)
    buckets: tuple[tuple[int, int], ...] = ((4, 4),)  # (views per sample, global samples per batch)
    resolutions: tuple[tuple[int, int], ...] = ((64, 48),)  # (W, H); portrait (H > W) allowed
    workers: int = 0  # processes drawing scenes on the host ahead of the steps (0: in the training process)
    # Views marked 'mixed' instead of 'landscape' / 'portrait': a resolution and its transpose (stored alike, in
    # landscape layout) then share one compiled step, half the compilations, but the model runs the patch embedding
    # and the heads both ways, keeping each sample's own (fast3r_jax.model.fast3r.View): worth it only while
    # compilation dominates a run, since the heads can be most of a small model's FLOPs.
    mixed_orientation: bool = False

    def __post_init__(self):
        if self.num_scenes < 1 or not self.buckets or not self.resolutions:
            raise InputError("rendered data needs num_scenes >= 1 and at least one bucket and resolution")
        if any(v < 1 or n < 1 for v, n in self.buckets):
            raise InputError(f"rendered data buckets must be positive (views, samples) pairs, got {self.buckets}")
        if any(w < 16 or h < 16 or w % 16 or h % 16 for w, h in self.resolutions):
            raise InputError(f"rendered resolutions must be multiples of 16 pixels, got {self.resolutions}")
        low, high = self.span_fraction
        if not 0 < low <= high < float("inf"):
            raise InputError(f"rendered span_fraction must be (low, high) with 0 < low <= high, "
                             f"got {self.span_fraction}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: str = "2000 @ synthetic(num_scenes=2000, num_views=4, resolution=(64, 48), split='train')"
    val: str = "16 @ synthetic(num_scenes=16, num_views=4, resolution=(64, 48), split='val')"
    # landscape (W, H) buckets, one per batch; None keeps the source's
    resolutions: tuple[tuple[int, int], ...] | None = ((64, 48),)
    augment: bool = True  # random zoom (aug_crop) and colour jitter
    aug_crop: int | None = 0  # None: each dataset's own margin (upstream's per-dataset values)
    batch_size: int = 4  # global batch (samples); split over the mesh's data axis and processes
    workers: int = 0  # grain worker processes per host
    # when set, training (and validation, split 'val') batches are rendered on the accelerator instead:
    # train, val, resolutions, augment, aug_crop, batch_size and workers are then unused
    rendered: RenderedDataConfig | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: Fast3RConfig = tiny()
    optimizer: OptimizerConfig = OptimizerConfig(lr=3e-4, warmup_steps=20, total_steps=300, grad_clip_norm=1.0)
    data: DataConfig = DataConfig()
    # converted checkpoint folder to start from (fine-tuning); None: random init. Its model must have the run's
    # architecture (Fast3RConfig.architecture: RUNTIME_FIELDS such as image_size and remat may differ)
    init: str | None = None
    # init may hold a shallower model (encoder and fusion depths dividing the run's, all else equal): it is grown to
    # the run's depths with identity blocks, the same function (fast3r_jax.model.params.deepen)
    deepen_init: bool = False
    steps: int = 300
    dtype: str = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
    layout: str = "zero2"  # replicated | zero2 | fsdp (see fast3r_jax.sharding)
    mesh_data: int = -1  # data-axis size (-1: all devices not used by the tensor axis)
    mesh_tensor: int = 1  # tensor-parallel degree
    alpha: float = 0.2  # confidence-loss regulariser
    # weight of the camera term of the loss (train.losses.camera_pose_losses); 0 is upstream's criterion
    pose_weight: float = 0.0
    seed: int = 0
    workdir: str = "runs/tiny_synthetic"
    log_every: int = 10
    val_every: int = 100
    val_batches: int = 2  # 0 disables validation
    ckpt_every: int = 100
    keep: int = 3  # checkpoints kept
    # stop (with a checkpoint) once this much wall time has passed since the state was ready (compilation included);
    # with several processes checked at log steps
    time_limit_s: float | None = None
    # rendered data: compile the step for every bucket and resolution at the start, concurrently (the run then waits
    # for the slowest compilation instead of their sum); False compiles each shape when a batch first needs it
    compile_ahead: bool = True

    def __post_init__(self):
        # Imported here: both modules import jax, and predict imports this module.
        from fast3r_jax.model.fast3r import DTYPES  # noqa: PLC0415
        from fast3r_jax.sharding import LAYOUTS  # noqa: PLC0415

        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise InputError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        weight = self.pose_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise InputError(f"pose_weight must be a finite number >= 0, got {self.pose_weight!r}")
        if self.steps < 1 or self.log_every < 1 or self.ckpt_every < 1 or self.val_every < 1:
            raise InputError("steps, log_every, ckpt_every and val_every must be positive")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


# ----------------------------------------------------------------------------
# Config files.
# ----------------------------------------------------------------------------


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{source}: not valid JSON ({err})") from None


def load_config_file(spec: str | os.PathLike, expect: type[T] | None = None) -> T:
    """The config named by `spec`: a preset name (PRESETS), a Python file whose `get_config()` returns it
    (`path.py`, or `path.py:variant` for `get_config("variant")`), or a config.json (ours, or upstream's with
    encoder_args / decoder_args / head_args). `expect`: the type the caller needs. InputError names the file."""
    spec = os.fspath(spec)
    if spec in PRESETS:
        cfg: Any = PRESETS[spec]()
    else:
        path_text, sep, variant = spec.rpartition(":")
        if not (sep and path_text.endswith(".py")):
            path_text, variant = spec, ""
        path = pathlib.Path(path_text)
        if not path.is_file():
            raise InputError(f"config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        if path.suffix == ".py":
            cfg = _run_config_module(path, variant)
            if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
                check_fields(cfg, str(path))
        elif path.suffix == ".json" and not variant:
            data = _parse_json(path.read_text(), str(path))
            upstream = isinstance(data, Mapping) and "encoder_args" in data
            cfg = from_upstream(data, str(path)) if upstream else Fast3RConfig.from_dict(data, str(path))
        else:
            raise InputError(f"config {spec!r}: expected a preset, a .py file (optionally :variant) or a .json file")
    if expect is not None and not isinstance(cfg, expect):
        raise InputError(f"config {spec!r} is a {type(cfg).__name__}, expected a {expect.__name__}")
    return cfg


def _run_config_module(path: pathlib.Path, variant: str) -> Any:
    """get_config() (or get_config(variant)) of the Python file `path`, run as a module of its own."""
    module_spec = importlib.util.spec_from_file_location(f"fast3r_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise InputError(f"{path}: {err}") from None
    if not callable(getattr(module, "get_config", None)):
        raise InputError(f"{path} defines no get_config()")
    return module.get_config(variant) if variant else module.get_config()
