"""Devices and precision: pick the device, bf16 autocast, channels-last, and a batch size that fits the GPU."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..core.errors import TrainingError

__all__ = ["autocast", "flush_denormals", "is_oom", "largest_fitting_batch", "resolve_device", "resolve_precision",
           "use_channels_last"]


def flush_denormals(device: torch.device, on: bool = True) -> bool:
    """Treat denormal floats as zero on the CPU (``on=False``: torch's default again); on during each
    training epoch.

    Freshly initialised networks produce denormal gradients and optimizer moments, which x86 CPUs
    compute 10-100x slower: a resnet18 step at 64 px took 3.5 s instead of 0.11 s. Values below
    1.2e-38 do not matter to training. It is a setting of the whole process; True when it applies.
    """
    return device.type == "cpu" and bool(torch.set_flush_denormal(on))


def resolve_device(name: str = "auto") -> torch.device:
    """``'auto'``: CUDA, then Apple MPS, then CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device=cuda asked for, but no CUDA GPU is visible; use device cpu or auto")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise TrainingError("device=mps asked for, but Apple's MPS is not available; use device cpu or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``'auto'``: bf16 on CUDA GPUs that support it, fp32 elsewhere."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """The channels-last memory layout: the setting, or (None) on CUDA only."""
    return setting if setting is not None else device.type == "cuda"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and CPU when ``precision='bf16'``; otherwise nothing."""
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_oom(exc: BaseException) -> bool:
    """Whether an exception says the device ran out of memory."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def largest_fitting_batch(model: nn.Module, optimizer: torch.optim.Optimizer, image_shape: tuple[int, int, int],
                          device: torch.device, precision: str, too_big: int) -> int | None:
    """The largest batch size below ``too_big`` (halving) whose forward and backward pass fit on the GPU.

    None when not even one image fits. Gradients are cleared and the CUDA cache emptied on the way.
    """
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    trial = too_big // 2
    while trial >= 1:
        try:
            x = torch.zeros((trial, *image_shape), device=device)
            with autocast(device, precision):
                out = model(x)
            out.float().sum().backward()
            optimizer.zero_grad(set_to_none=True)
            return trial
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            trial //= 2
    return None
