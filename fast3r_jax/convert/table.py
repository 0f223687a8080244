"""Conversion between upstream PyTorch state-dict names/layouts and this model's parameters: one table.

Conversion is strict: every upstream tensor is mapped, and a missing, unexpected, mis-shaped, non-floating-point or
non-finite tensor fails with one error that lists all of them.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import numpy as np

from fast3r_jax.config import Fast3RConfig
from fast3r_jax.model.params import CheckpointMismatchError, abstract_params

# Layout transforms: (PyTorch -> ours, ours -> PyTorch); `heads` is the attention head count where it matters.
_SAME = (lambda x, heads: x, lambda x, heads: x)
_LINEAR = (lambda w, heads: w.T, lambda k, heads: k.T)  # (out, in) <-> (in, out)
_CONV = (lambda w, heads: w.transpose(2, 3, 1, 0), lambda k, heads: k.transpose(3, 2, 0, 1))  # OIHW <-> HWIO
_CONV_T = (lambda w, heads: w.transpose(0, 2, 3, 1), lambda k, heads: k.transpose(0, 3, 1, 2))  # IOHW <-> IHWO
_QKV_KERNEL = (lambda w, heads: w.reshape(3, heads, -1, w.shape[1]).transpose(3, 0, 1, 2),  # (3D, D) <-> (D, 3, H, Dh)
               lambda k, heads: k.transpose(1, 2, 3, 0).reshape(-1, k.shape[0]))
_QKV_BIAS = (lambda b, heads: b.reshape(3, heads, -1), lambda b, heads: b.reshape(-1))  # (3D,) <-> (3, H, Dh)
_PROJ_KERNEL = (lambda w, heads: w.T.reshape(heads, -1, w.shape[0]),  # (D, D) <-> (H, Dh, D)
                lambda k, heads: k.reshape(-1, k.shape[-1]).T)

_BLOCK_RULES = (
    ("norm1.weight", "norm1.scale", _SAME),
    ("norm1.bias", "norm1.bias", _SAME),
    ("attn.qkv.weight", "attn.qkv.kernel", _QKV_KERNEL),
    ("attn.qkv.bias", "attn.qkv.bias", _QKV_BIAS),
    ("attn.proj.weight", "attn.proj.kernel", _PROJ_KERNEL),
    ("attn.proj.bias", "attn.proj.bias", _SAME),
    ("norm2.weight", "norm2.scale", _SAME),
    ("norm2.bias", "norm2.bias", _SAME),
    ("mlp.fc1.weight", "mlp.fc1.kernel", _LINEAR),
    ("mlp.fc1.bias", "mlp.fc1.bias", _SAME),
    ("mlp.fc2.weight", "mlp.fc2.kernel", _LINEAR),
    ("mlp.fc2.bias", "mlp.fc2.bias", _SAME),
)


def _head_rules() -> list[tuple[str, str, tuple]]:
    """(upstream suffix under '<head>.dpt.', our suffix under '<head>.', transform) for one DPT head."""
    rules = []
    for s in range(4):
        rules += [(f"act_postprocess.{s}.0.weight", f"reassemble.{s}.proj.kernel", _CONV),
                  (f"act_postprocess.{s}.0.bias", f"reassemble.{s}.proj.bias", _SAME)]
    for s, transform in ((0, _CONV_T), (1, _CONV_T), (3, _CONV)):
        rules += [(f"act_postprocess.{s}.1.weight", f"reassemble.{s}.resample.kernel", transform),
                  (f"act_postprocess.{s}.1.bias", f"reassemble.{s}.resample.bias", _SAME)]
    for j in range(4):
        rules.append((f"scratch.layer{j + 1}_rn.weight", f"project.{j}.kernel", _CONV))
        base = f"scratch.refinenet{j + 1}"
        rules += [(f"{base}.out_conv.weight", f"fusion.{j}.out_conv.kernel", _CONV),
                  (f"{base}.out_conv.bias", f"fusion.{j}.out_conv.bias", _SAME)]
        for unit, ours in (("resConfUnit1", "rcu1"), ("resConfUnit2", "rcu2")):
            for conv in ("conv1", "conv2"):
                rules += [(f"{base}.{unit}.{conv}.weight", f"fusion.{j}.{ours}.{conv}.kernel", _CONV),
                          (f"{base}.{unit}.{conv}.bias", f"fusion.{j}.{ours}.{conv}.bias", _SAME)]
    for idx, ours in ((0, "out_conv1"), (2, "out_conv2"), (4, "out_conv3")):
        rules += [(f"head.{idx}.weight", f"{ours}.kernel", _CONV), (f"head.{idx}.bias", f"{ours}.bias", _SAME)]
    return rules


def _table(cfg: Fast3RConfig) -> list[tuple[str, str, tuple, int | None, int]]:
    """The one conversion table: (upstream key, our path, transform, layer index or None, heads)."""
    rows = [("encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.kernel", _CONV, None, 0),
            ("encoder.patch_embed.proj.bias", "encoder.patch_embed.proj.bias", _SAME, None, 0),
            ("encoder.enc_norm.weight", "encoder.norm.scale", _SAME, None, 0),
            ("encoder.enc_norm.bias", "encoder.norm.bias", _SAME, None, 0),
            ("decoder.decoder_embed.weight", "fusion.embed.kernel", _LINEAR, None, 0),
            ("decoder.decoder_embed.bias", "fusion.embed.bias", _SAME, None, 0),
            ("decoder.dec_norm.weight", "fusion.norm.scale", _SAME, None, 0),
            ("decoder.dec_norm.bias", "fusion.norm.bias", _SAME, None, 0)]
    for theirs, ours, stack, bias in (("encoder.enc_blocks", "encoder.blocks.layers", cfg.encoder, True),
                                      ("decoder.dec_blocks", "fusion.blocks.layers", cfg.fusion, cfg.fusion.qkv_bias)):
        for up, mine, transform in _BLOCK_RULES:
            if up == "attn.qkv.bias" and not bias:
                continue
            rows += [(f"{theirs}.{i}.{up}", f"{ours}.{mine}", transform, i, stack.num_heads)
                     for i in range(stack.depth)]
    for theirs, ours in (("downstream_head", "global_head"), ("downstream_head_local", "local_head")):
        rows += [(f"{theirs}.dpt.{up}", f"{ours}.{mine}", transform, None, 0) for up, mine, transform in _head_rules()]
    return rows


# Upstream aliases: inside a DPT head `scratch.layer_rn.<j>` is the same module as `scratch.layer<j+1>_rn`.
_ALIAS = re.compile(r"^(.*\.dpt\.scratch\.)layer_rn\.(\d)\.weight$")


_ALIAS_SOURCE = re.compile(r"^(.*\.dpt\.scratch\.)layer(\d)_rn\.weight$")


def _canonical(key: str) -> str:
    m = _ALIAS.match(key)
    return f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight" if m else key


def upstream_shapes(cfg: Fast3RConfig) -> dict[str, tuple[int, ...]]:
    """The upstream state-dict key -> shape layout of a config (without the DPT alias keys)."""
    tree = jax.eval_shape(lambda p: _to_torch_layout(p, cfg), abstract_params(cfg))
    return {k: tuple(v.shape) for k, v in tree.items()}


def fold_aliases(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Folds `scratch.layer_rn.<j>` into `scratch.layer<j+1>_rn` (either or both may be present; both must agree)."""
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        canon = _canonical(key)
        if canon in out:
            if out[canon].shape != np.shape(value) or not np.array_equal(out[canon], value):
                raise CheckpointMismatchError(f"aliased tensors {key!r} and {canon!r} differ; they are one tensor "
                                              "in the upstream model")
            continue
        out[canon] = np.asarray(value)
    return out


def check_state_dict(state_dict: Mapping[str, np.ndarray], cfg: Fast3RConfig) -> dict[str, np.ndarray]:
    """Returns the state dict with aliases folded, or raises one error listing every mismatch.

    Every parameter of the model is floating point, so an integer, boolean or complex tensor is refused rather than
    cast, and so is a NaN or infinity: either would convert without a word and only show as garbage outputs.
    """
    sd = fold_aliases(state_dict)
    expected = upstream_shapes(cfg)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shared = sorted(set(expected) & set(sd))
    misshaped = [f"{k}: checkpoint {tuple(np.shape(sd[k]))} vs model {expected[k]}"
                 for k in shared if tuple(np.shape(sd[k])) != expected[k]]
    not_float = [f"{k}: {sd[k].dtype}" for k in shared if not jax.dtypes.issubdtype(sd[k].dtype, np.floating)]
    non_finite = [f"{k}: {count} of {sd[k].size} values" for k in shared
                  if jax.dtypes.issubdtype(sd[k].dtype, np.floating) and (count := _non_finite(sd[k]))]
    if missing or unexpected or misshaped or not_float or non_finite:
        lines = ["checkpoint tensors do not fit the model config:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                             ("not floating point", not_float), ("with NaN or infinite values", non_finite)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {k}" for k in items]
        raise CheckpointMismatchError("\n".join(lines))
    return sd


def _non_finite(x: np.ndarray) -> int:
    """How many entries are NaN or infinite."""
    return x.size - int(np.count_nonzero(np.isfinite(x)))


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        tree = tree.setdefault(int(p) if p.isdigit() else p, {})
    tree[leaf] = value


def _get(tree: Mapping, path: str):
    for p in path.split("."):
        tree = tree[int(p) if p.isdigit() else p]
    return tree


def params_from_torch(state_dict: Mapping[str, np.ndarray], cfg: Fast3RConfig) -> dict:
    """Upstream state dict (key -> numpy array) -> this model's parameters (pure nested dict, float32)."""
    sd = check_state_dict(state_dict, cfg)
    stacks: dict[str, list] = {}
    params: dict = {}
    for key, path, (to_ours, _), layer, heads in _table(cfg):
        value = to_ours(np.asarray(sd[key], dtype=np.float32), heads)
        if layer is None:
            _set(params, path, value)
        else:
            stacks.setdefault(path, []).append(value)
    for path, layers in stacks.items():
        _set(params, path, np.stack(layers))  # (L, ...)
    return params


def _to_torch_layout(params: Mapping, cfg: Fast3RConfig) -> dict:
    return {key: to_torch(_get(params, path) if layer is None else _get(params, path)[layer], heads)
            for key, path, (_, to_torch), layer, heads in _table(cfg)}


def params_to_torch(params: Mapping, cfg: Fast3RConfig) -> dict[str, np.ndarray]:
    """This model's parameters -> the upstream state dict (including the DPT alias keys), float32 numpy."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(params))
    out = {k: np.ascontiguousarray(v) for k, v in _to_torch_layout(params, cfg).items()}
    for key in list(out):
        m = _ALIAS_SOURCE.match(key)
        if m:
            out[f"{m.group(1)}layer_rn.{int(m.group(2)) - 1}.weight"] = out[key]
    return out
