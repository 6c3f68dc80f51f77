"""Where and in what precision training runs: the device, bf16 or fp32, and the peak FLOP/s for MFU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from llmpipe.config.pretrain import PretrainParams
from llmpipe.util.io import InputError

# Peak dense bf16 TFLOP/s per device, for MFU. CPUs have no entry: MFU is not reported there.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "L40": 181.0}




# "0" or "1" overrides the detection below, so one machine can run the suite as the other CPU kind
# would resolve `precision: auto` (the arithmetic of fp32 kernels still is this machine's).
ASSUME_BF16_ENV = "LLMPIPE_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """bf16 autocast pays off on CPUs only with AVX512-BF16 or AMX; elsewhere it is far slower than fp32."""
    forced = os.environ.get(ASSUME_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_kind() -> dict[str, str]:
    """What the weights depend on besides params and data: the CPU model and its bf16 units (a model
    trained on another CPU kind, or in another precision, has other weights and another DVC hash)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    units = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return {"cpu": name, "cpu_bf16_units": ",".join(units) or "none"}


def resolve_device(cfg: PretrainParams, local_rank: int = 0) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("pretrain.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_dtype(cfg: PretrainParams, device: torch.device) -> torch.dtype:
    if cfg.precision == "fp32":
        return torch.float32
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def trained_precision(cfg) -> str:
    """What a run of `cfg` (pretrain or finetune section) computes in on this machine: "bfloat16" or
    "float32". Part of a checkpoint's identity: `auto` resolves differently on another CPU kind, and a
    run there must not resume (and be labelled with) a checkpoint made in the other precision."""
    return str(resolve_dtype(cfg, resolve_device(cfg))).removeprefix("torch.")


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None
