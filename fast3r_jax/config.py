"""Model configuration as data: the released ViT-L model, the reference tiny model, and upstream config.json."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

# Upstream's inference-time attention temperature for the fusion transformer: logits are scaled by
# head_dim**-0.5 * sqrt(log(137) / log(20)) in eval mode (trained on ~20 views, evaluated on longer sequences).
INFERENCE_SCALE_FACTOR = math.sqrt(math.log(137) / math.log(20))

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")


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

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")
        for name, dim, heads in (("encoder", self.encoder.embed_dim, self.encoder.num_heads),
                                 ("fusion", self.fusion.embed_dim, self.fusion.num_heads)):
            if dim % heads:
                raise ValueError(f"{name}: embed_dim {dim} is not divisible by num_heads {heads}")
        if (self.encoder.embed_dim // self.encoder.num_heads) % 4:
            raise ValueError("encoder head_dim must be a multiple of 4 for 2D RoPE")
        if self.fusion.depth < 4:
            raise ValueError(f"fusion depth must be >= 4 for the DPT hooks, got {self.fusion.depth}")

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """Indices into the fusion output list read by the DPT heads (0 = encoder tokens)."""
        depth = self.fusion.depth
        return (0, depth * 2 // 4, depth * 3 // 4, depth)

    def replace(self, **kwargs) -> "Fast3RConfig":
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Fast3RConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Fast3RConfig fields: {sorted(unknown)}")
        sub = {"encoder": EncoderConfig, "fusion": FusionConfig, "head": HeadConfig}
        kwargs = {}
        for key, value in d.items():
            if key in sub:
                fields = {f.name for f in dataclasses.fields(sub[key])}
                bad = set(value) - fields
                if bad:
                    raise ValueError(f"unknown {key} config fields: {sorted(bad)}")
                value = sub[key](**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Fast3RConfig":
        return cls.from_dict(json.loads(text))


def large() -> Fast3RConfig:
    """The released Fast3R_ViT_Large_512: ViT-L encoder, 24-block 1024-wide fusion transformer, two DPT heads."""
    return Fast3RConfig()


def tiny() -> Fast3RConfig:
    """The reference tiny config used for parity tests (embed 96/64, depth 2/10)."""
    return Fast3RConfig(
        encoder=EncoderConfig(embed_dim=96, num_heads=3, depth=2),
        fusion=FusionConfig(embed_dim=64, num_heads=4, depth=10),
    )


_ENCODER_IGNORED = {"encoder_type", "img_size", "patch_embed_cls", "attn_implementation", "pos_embed"}
_FUSION_IGNORED = {"decoder_type", "enc_embed_dim", "attn_implementation", "drop", "attn_drop"}
_HEAD_IGNORED = {"head_type", "output_mode", "patch_size"}


def from_upstream(d: Mapping[str, Any]) -> Fast3RConfig:
    """Builds a config from an upstream `config.json` dict (encoder_args / decoder_args / head_args).

    Every upstream key is either mapped, checked to be a value we implement, or is a PyTorch kernel choice with
    the same math (attn_implementation); anything else raises, so no setting is silently dropped.
    """
    missing = {"encoder_args", "decoder_args", "head_args"} - set(d)
    if missing:
        raise ValueError(f"upstream config is missing {sorted(missing)}")
    unknown_top = set(d) - {"encoder_args", "decoder_args", "head_args", "freeze"}
    if unknown_top:
        raise ValueError(f"unknown upstream config keys: {sorted(unknown_top)}")
    enc, dec, head = dict(d["encoder_args"]), dict(d["decoder_args"]), dict(d["head_args"])

    _expect(enc, "encoder_args", "encoder_type", "croco")
    _expect(enc, "encoder_args", "patch_embed_cls", "ManyAR_PatchEmbed")
    pos_embed = enc.get("pos_embed", "RoPE100")
    if not str(pos_embed).startswith("RoPE"):
        raise ValueError(f"encoder_args.pos_embed={pos_embed!r}: only RoPE<base> is supported")
    _expect(dec, "decoder_args", "decoder_type", "fast3r")
    for key in ("drop", "attn_drop"):
        if float(dec.get(key, 0.0)) != 0.0:
            raise ValueError(f"decoder_args.{key}={dec[key]} is not supported (the released model uses 0)")
    _expect(head, "head_args", "head_type", "dpt")
    _expect(head, "head_args", "output_mode", "pts3d")

    enc_known = _ENCODER_IGNORED | {"patch_size", "embed_dim", "num_heads", "depth", "mlp_ratio"}
    dec_known = _FUSION_IGNORED | {"random_image_idx_embedding", "embed_dim", "num_heads", "depth", "mlp_ratio",
                                   "qkv_bias", "attn_bias_for_inference_enabled"}
    head_known = _HEAD_IGNORED | {"landscape_only", "depth_mode", "conf_mode", "with_local_head"}
    for name, args, known in (("encoder_args", enc, enc_known), ("decoder_args", dec, dec_known),
                              ("head_args", head, head_known)):
        extra = set(args) - known
        if extra:
            raise ValueError(f"unsupported upstream {name}: {sorted(extra)}")

    patch_size = int(enc.get("patch_size", 16))
    if int(head.get("patch_size", patch_size)) != patch_size:
        raise ValueError("head_args.patch_size must equal encoder_args.patch_size")
    if patch_size != 16:
        raise ValueError(f"patch_size={patch_size}: the DPT head is defined for patch size 16")
    enc_dim = int(enc.get("embed_dim", 768))
    if "enc_embed_dim" in dec and int(dec["enc_embed_dim"]) != enc_dim:
        raise ValueError(f"decoder_args.enc_embed_dim={dec['enc_embed_dim']} != encoder_args.embed_dim={enc_dim}")
    if not head.get("with_local_head", False):
        raise ValueError("head_args.with_local_head=False is not supported: Fast3R predicts global and local maps")
    conf_mode = head.get("conf_mode")
    if not conf_mode:
        raise ValueError("head_args.conf_mode must be set: Fast3R predicts confidences")

    return Fast3RConfig(
        encoder=EncoderConfig(
            patch_size=patch_size,
            embed_dim=enc_dim,
            num_heads=int(enc.get("num_heads", 12)),
            depth=int(enc.get("depth", 12)),
            mlp_ratio=float(enc.get("mlp_ratio", 4.0)),
            rope_base=float(str(pos_embed)[len("RoPE"):]),
        ),
        fusion=FusionConfig(
            embed_dim=int(dec.get("embed_dim", 768)),
            num_heads=int(dec.get("num_heads", 12)),
            depth=int(dec.get("depth", 12)),
            mlp_ratio=float(dec.get("mlp_ratio", 4.0)),
            qkv_bias=bool(dec.get("qkv_bias", True)),
            random_image_ids=bool(dec["random_image_idx_embedding"]),
            inference_attention_scale=bool(dec.get("attn_bias_for_inference_enabled", True)),
        ),
        head=HeadConfig(
            depth_mode=_mode(head["depth_mode"], "depth_mode", ("exp", "linear", "square")),
            conf_mode=_mode(conf_mode, "conf_mode", ("exp", "sigmoid")),
            landscape_only=bool(head.get("landscape_only", True)),
            with_local_head=True,
        ),
    )


def _expect(args: Mapping[str, Any], where: str, key: str, value: str) -> None:
    got = args.get(key, value)
    if got != value:
        raise ValueError(f"{where}.{key}={got!r} is not supported (expected {value!r})")


def _mode(mode, name: str, allowed: tuple[str, ...]) -> tuple[str, float, float]:
    kind, vmin, vmax = mode
    if kind not in allowed:
        raise ValueError(f"head_args.{name}={mode!r}: mode must be one of {allowed}")
    if name == "depth_mode" and (float(vmin), float(vmax)) != (-math.inf, math.inf):
        raise ValueError(f"head_args.depth_mode={mode!r}: bounded depth modes are not supported (upstream asserts none)")
    return (str(kind), float(vmin), float(vmax))
