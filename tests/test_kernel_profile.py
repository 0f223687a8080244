"""The kernel tables of benchmarks/profile_forward.py (also train_step.py --profile): reading a Perfetto trace's GPU
tracks and grouping kernels by kind, on a trace written here with kernel names as XLA and cuDNN give them on H100/H200.
"""

import gzip
import json

import pytest

from benchmarks.profile_forward import by_kind, device_kernel_times, kernel_kind, kernel_tables

NAMES = {
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0": "attention forward",
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_7_64x128x64_4x1x1_kernel0_0":
        "attention backward",
    "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
    "sm90_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
    "nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_TNN": "matmul",
    "gemm_fusion_dot_42": "matmul",
    "transpose_copy_fusion_3": "copy / transpose",
    "input_reduce_fusion_2": "reduction fusion",
    "loop_multiply_fusion_17": "elementwise / other",
}


def _trace(tmp_path, events, gpu=True):
    """A trace folder as jax.profiler.trace writes it: process 1 the GPU (if `gpu`), process 2 the host."""
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    meta = [{"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    meta += [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}}] if gpu else []
    with gzip.open(folder / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": meta + events}, f)
    return tmp_path


@pytest.mark.parametrize("name,kind", NAMES.items())
def test_kernel_kind(name, kind):
    assert kernel_kind(name) == kind


def test_device_kernel_times_sums_gpu_tracks_only(tmp_path):
    events = [{"ph": "X", "pid": 1, "name": name, "dur": 10.0 * (i + 1)} for i, name in enumerate(NAMES)]
    events += [{"ph": "X", "pid": 1, "name": "nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_TNN", "dur": 5.0},
               {"ph": "X", "pid": 2, "name": "nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_TNN", "dur": 1e6}]  # host: ignored
    times = device_kernel_times(_trace(tmp_path, events))
    assert times["nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_TNN"] == (55.0, 2)
    kinds = by_kind(times)
    assert kinds["convolution"] == (30.0 + 40.0, 2)
    assert kinds["matmul"] == (55.0 + 60.0, 3)
    assert sum(us for us, _ in kinds.values()) == sum(us for us, _ in times.values())
    table = kernel_tables(times, top=3).splitlines()
    assert table[0].split()[-1] == "kind" and table[1].endswith("matmul")  # 115 us, the largest kind
    assert len(table) == 2 * (1 + 3)


def test_device_kernel_times_without_gpu_tracks(tmp_path):
    with pytest.raises(ValueError, match="no GPU device tracks"):
        device_kernel_times(_trace(tmp_path, [{"ph": "X", "pid": 2, "name": "ynn_fusion", "dur": 3.0}], gpu=False))
