"""Converts an official Fast3R (or DUSt3R) PyTorch checkpoint into a fast3r-jax checkpoint, without torch.

    fast3r-jax convert SRC OUT [--config large|tiny|PATH.py[:variant]|PATH/config.json] [--seed N] [--overwrite]
    python -m fast3r_jax.convert SRC OUT ...          # the same

SRC: a Hugging Face snapshot folder (config.json + model.safetensors), a `.safetensors`, a PyTorch `.pth`/`.bin`,
or a Lightning `.ckpt` (state dict under `state_dict` with the `net.` prefix). A DUSt3R checkpoint initialises the
encoder (and the global head where its shapes match), the rest is freshly initialised; the report says which.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from fast3r_jax import config as config_lib
from fast3r_jax.checkpoint import save_pretrained
from fast3r_jax.convert.readers import load_state_dict
from fast3r_jax.convert.table import fold_aliases, params_from_torch, params_to_torch
from fast3r_jax.errors import InputError
from fast3r_jax.io.files import check_output_folder
from fast3r_jax.model.params import init_params

# DUSt3R prefixes -> Fast3R prefixes for the parts upstream initialises from a DUSt3R checkpoint.
_DUST3R_ENCODER = (("patch_embed.", "encoder.patch_embed."), ("enc_blocks.", "encoder.enc_blocks."),
                   ("enc_norm.", "encoder.enc_norm."))
_DUST3R_HEAD = (("downstream_head1.", "downstream_head."),)


def resolve_config(src: pathlib.Path, spec: str | None) -> config_lib.Fast3RConfig:
    """The model config: the snapshot's config.json, or `spec` (--config: see config.load_config_file)."""
    snapshot_config = src / "config.json" if src.is_dir() else None
    if snapshot_config is not None and snapshot_config.is_file():
        if spec is not None:
            raise InputError(f"{src} has its own config.json; do not pass --config")
        spec = snapshot_config
    return config_lib.load_config_file(spec or "large", expect=config_lib.Fast3RConfig)


def _rename(state_dict: dict, prefixes) -> dict:
    out = {}
    for key, value in state_dict.items():
        for old, new in prefixes:
            if key.startswith(old):
                out[new + key[len(old):]] = value
    return out


def from_dust3r(state_dict: dict[str, np.ndarray], cfg: config_lib.Fast3RConfig,
                seed: int) -> tuple[dict, dict[str, Any]]:
    """Fast3R params with the encoder (and the global head if every shape matches) taken from DUSt3R."""
    full = fold_aliases(params_to_torch(init_params(cfg, seed), cfg))
    encoder = _rename(state_dict, _DUST3R_ENCODER)
    bad = sorted(k for k in encoder if k not in full or full[k].shape != encoder[k].shape)
    missing = sorted(k for k in full if k.startswith("encoder.") and k not in encoder)
    if bad or missing:
        raise InputError("DUSt3R encoder does not match the config: "
                         f"mismatched {bad[:10]}, missing {missing[:10]}")
    full.update(encoder)
    head = fold_aliases(_rename(state_dict, _DUST3R_HEAD))
    head_ok = bool(head) and all(k in full and full[k].shape == v.shape for k, v in head.items()) \
        and all(k in head for k in full if k.startswith("downstream_head."))
    if head_ok:
        full.update(head)
    used = {k for k in state_dict if any(k.startswith(p) for p, _ in _DUST3R_ENCODER + (_DUST3R_HEAD if head_ok else ()))}
    report = {
        "source": "dust3r",
        "initialised_from_checkpoint": ["encoder"] + (["global_head"] if head_ok else []),
        "freshly_initialised": ["fusion", "local_head"] + ([] if head_ok else ["global_head"]),
        "seed": seed,
        "unused_checkpoint_prefixes": sorted({k.split(".")[0] for k in state_dict if k not in used}),
    }
    return params_from_torch(full, cfg), report


def convert(src: str | pathlib.Path, out: str | pathlib.Path, config: str | None = None, seed: int = 0,
            overwrite: bool = False) -> dict[str, Any]:
    """Reads SRC, maps every tensor strictly, writes an Orbax checkpoint + config to OUT. Returns the report.
    OUT may not be, contain or lie inside SRC (checked before anything is read)."""
    src = pathlib.Path(src)
    check_output_folder(out, overwrite=overwrite, inputs=[src], what="checkpoint folder")
    cfg = resolve_config(src, config)
    state_dict, layout = load_state_dict(src)
    if layout == "dust3r":
        params, report = from_dust3r(state_dict, cfg, seed)
    else:
        params = params_from_torch(state_dict, cfg)
        report = {"source": layout, "tensors": len(state_dict)}
    report["src"] = str(src.absolute())
    save_pretrained(out, cfg, params, notes=report, overwrite=overwrite, inputs=[src])
    return report

