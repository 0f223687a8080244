"""Writes the small checkpoints that tests/test_torch_checkpoint.py reads.

Not run by the tests (they must not import torch). To regenerate, from the repository root:

    pip install "torch>=2.4"   # only for this script
    python tests/data/torch_fixtures/make_fixtures.py

Outputs (next to this script):
  plain.pth          torch.save state dict: several dtypes, strided views, a shared storage, a 0-d tensor
  lightning.ckpt     dict laid out like a Lightning checkpoint (`net.`-prefixed state_dict, optimizer...)
  lightning_extra.ckpt  Lightning layout whose state_dict also has a key outside `net.` (must be refused)
  dust3r.pth         {'model': DUSt3R-named state dict, 'args': argparse.Namespace, 'epoch': 3}
  weights.safetensors  written from numpy with the safetensors package, incl. a bfloat16 tensor
  expected.npz       for every tensor above, keyed "<file stem>|<key>|<key>..." (its path in the nested
                     object): its raw bits as unsigned integers of the same width (C order); "dtypes" is
                     a JSON map key -> numpy dtype name, so the tests compare bit-exactly, bfloat16 included.

The files were made with torch 2.13.0 (CPU wheel) and are committed; torch.save output is deterministic.
"""

import argparse
import collections
import functools
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy
import torch

OUT = Path(__file__).resolve().parent


def plain_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    shared = torch.arange(10, dtype=torch.int32)
    return collections.OrderedDict(
        w_f32=torch.randn(3, 5, generator=g),
        w_f16=torch.randn(2, 3, generator=g).half(),
        w_bf16=torch.randn(3, 2, generator=g).bfloat16(),
        w_f64=torch.randn(3, generator=g).double(),
        idx_i64=torch.tensor([-(2**40), -1, 0, 7, 2**62], dtype=torch.int64),
        mask_bool=torch.tensor([[True, False, True]]),
        pixels_u8=torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
        ids_u16=torch.tensor([0, 1, 65535], dtype=torch.uint16),  # saved as untyped bytes + dtype
        transposed=base.t(),  # (6, 4) with strides (1, 6) over `base`'s storage
        window=base[1:3, 2:5],  # (2, 3) with storage offset 8, strides (6, 1)
        shared_a=shared[:6].view(2, 3),  # shares one storage with shared_b
        shared_b=shared[4:],
        scalar=torch.tensor(2.5),
    )


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)


def lightning_checkpoint() -> dict:
    torch.manual_seed(1)
    net = Tiny()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    net.proj(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    scheduler.step()
    state_dict = collections.OrderedDict(
        [("net.encoder.patch_embed.proj.weight", net.proj.weight.detach()),
         ("net.decoder.dec_norm.bias", net.proj.bias.detach()),
         ("net.downstream_head.dpt.head.0.weight", torch.linspace(-1, 1, 6).reshape(2, 3)),
         ("epoch_fraction", torch.tensor(0.25)),
         ("train_total_samples", torch.tensor(96, dtype=torch.int64)),
         ("train_total_images", torch.tensor(480, dtype=torch.int64))])
    return {
        "epoch": 2,
        "global_step": 40,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3, "completed": 2}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": {
            "best_model_score": torch.tensor(0.125), "best_model_path": "/ckpts/epoch_001.ckpt",
            "best_k_models": {"/ckpts/epoch_001.ckpt": torch.tensor(0.125)}}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "MixedPrecision": {"scale": 65536.0, "_growth_tracker": 3},
        "hyper_parameters": {
            "optimizer": functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.05),
            "compile": False, "pretrained": None, "tags": {"fast3r", "tiny"}, "blob": b"\x00\xff"},
    }


def lightning_extra_checkpoint() -> dict:
    state_dict = {"net.encoder.enc_norm.weight": torch.ones(2), "criterion.scale": torch.tensor(1.0)}
    return {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.5.0", "state_dict": state_dict}


def dust3r_checkpoint() -> dict:
    g = torch.Generator().manual_seed(2)
    model = collections.OrderedDict(
        [("patch_embed.proj.weight", torch.randn(4, 3, 2, 2, generator=g)),
         ("enc_blocks.0.norm1.weight", torch.ones(4)),
         ("dec_blocks2.0.norm1.bias", torch.randn(4, generator=g)),
         ("downstream_head1.dpt.head.4.bias", torch.randn(3, generator=g))])
    args = argparse.Namespace(model="AsymmetricCroCo3DStereo(patch_size=16)", lr=1e-4, epochs=3)
    return {"model": model, "args": args, "epoch": 3}


def safetensors_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "encoder.enc_norm.weight": rng.standard_normal(5).astype(np.float32),
        "encoder.patch_embed.proj.weight": rng.standard_normal((2, 3, 2, 2)).astype(ml_dtypes.bfloat16),
        "decoder.dec_norm.bias": rng.standard_normal(4).astype(np.float16),
        "decoder.table": rng.standard_normal((2, 2)),
        "decoder.ids": np.array([[1, -2], [3, 2**40]], np.int64),
        "decoder.ids32": np.array([5, -6], np.int32),
        "decoder.flags": np.array([True, False]),
        "decoder.bytes": np.array([0, 200], np.uint8),
        "decoder.scalar": np.array(1.5, np.float32),
    }


def tensors_of(obj, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Collects every tensor in a nested checkpoint object as a numpy array under a path-like key."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().contiguous()
        is_bf16 = t.dtype == torch.bfloat16  # numpy has no bfloat16: go through the raw bits
        out[prefix] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if is_bf16 else t.numpy()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            tensors_of(v, f"{prefix}|{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            tensors_of(v, f"{prefix}|{i}", out)


def main() -> None:
    expected: dict[str, np.ndarray] = {}
    for stem, suffix, obj in [("plain", ".pth", plain_state_dict()),
                              ("lightning", ".ckpt", lightning_checkpoint()),
                              ("lightning_extra", ".ckpt", lightning_extra_checkpoint()),
                              ("dust3r", ".pth", dust3r_checkpoint())]:
        torch.save(obj, OUT / f"{stem}{suffix}")
        tensors_of(obj, stem, expected)
    arrays = safetensors_arrays()
    safetensors.numpy.save_file(arrays, str(OUT / "weights.safetensors"), metadata={"format": "np"})
    (OUT / "weights.safetensors").chmod(0o644)
    expected.update({f"weights|{k}": v for k, v in arrays.items()})
    bits = {k: np.require(v, requirements="C").view(f"u{v.dtype.itemsize}") for k, v in expected.items()}
    dtypes = json.dumps({k: v.dtype.name for k, v in expected.items()})
    np.savez_compressed(OUT / "expected.npz", dtypes=np.array(dtypes), **bits)


if __name__ == "__main__":
    main()
