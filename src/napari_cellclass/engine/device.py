"""The one device policy: CUDA, else Apple MPS, else CPU, with a user override.

Mixed precision and channels-last are switched on for training only on CUDA, where
they pay.  Inference has its own fast path (docs/performance.md): channels-last on
CPUs too, and bf16 autocast on CPUs that do bf16 arithmetic natively (AVX512-BF16 or
AMX, read from the CPU flags) for the models where it measures faster than fp32
(engine/inference.py); rows whose two best classes are nearly tied are recomputed in
fp32, so the top-1 class is fp32's.  ``CELLCLASS_FAST=0`` (CLI
``--no-fast``, or ``resolve_device(fast=False)``) turns it off.  ``torch.compile`` is
opt-in (``CELLCLASS_COMPILE=1``): on this project's CPU it compiled for minutes.  ``describe()`` is what the widgets and the CLI
show the user, so nobody has to guess where their model runs.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch

from .._compat import avoid_triton_llvm_clash
from ..errors import CellClassError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
ENV_VAR = "CELLCLASS_DEVICE"
FAST_ENV = "CELLCLASS_FAST"  # "0" turns the fast inference path off
COMPILE_ENV = "CELLCLASS_COMPILE"  # "1" compiles models for inference (torch.compile)
RECHECK_ENV = "CELLCLASS_FAST_RECHECK"  # logit margin below which fast-path rows are redone in fp32 (0: never)
RECHECK_MARGIN = 0.25


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    amp: bool
    amp_dtype: torch.dtype | None
    channels_last: bool
    reason: str
    # inference only: channels-last also pays on CPUs (oneDNN), measured 1.1-1.9x here,
    # while for training on CPU it was not measured to help, so training keeps NCHW
    inference_channels_last: bool = False
    # inference only: the fast path (docs/performance.md): autocast on CUDA, bf16 on a CPU with
    # native bf16; off = fp32 inference everywhere
    fast_inference: bool = True
    compile_inference: bool = False
    cpu_bf16: bool = False
    # rows whose top-2 logits are closer than this are recomputed in fp32 (engine/inference.py)
    recheck_margin: float = RECHECK_MARGIN

    @property
    def inference_dtype(self) -> torch.dtype | None:
        """The autocast dtype inference runs in (None: fp32)."""
        if not self.fast_inference:
            return None
        if self.amp:
            return self.amp_dtype
        if self.device.type == "cpu" and self.cpu_bf16:
            return torch.bfloat16
        return None

    def describe(self) -> str:
        extras = []
        if self.amp:
            extras.append(f"mixed precision {str(self.amp_dtype).replace('torch.', '')}")
        elif self.inference_dtype is not None:
            extras.append("bf16 inference")
        if self.channels_last:
            extras.append("channels-last")
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        tail = f", {', '.join(extras)}" if extras else ""
        return f"{name}{tail} - {self.reason}"

    def autocast(self):
        """Context for the forward pass: autocast where ``amp`` is on (CUDA; bf16 CPUs when asked)."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return nullcontext()

    def inference_autocast(self):
        """Context for inference: autocast in :attr:`inference_dtype`, or nothing (fp32)."""
        dtype = self.inference_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def prepare_model(self, model: torch.nn.Module, *, inference: bool = False) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last or (inference and self.inference_channels_last):
            model = model.to(memory_format=torch.channels_last)
        return model

    def prepare_input(self, x: torch.Tensor, *, inference: bool = False) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.device.type == "cuda")
        if (self.channels_last or (inference and self.inference_channels_last)) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), read from the CPU flags."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _recheck_margin() -> float:
    raw = os.environ.get(RECHECK_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else RECHECK_MARGIN
    except ValueError:
        raise CellClassError(f"{RECHECK_ENV}={raw!r} is not a number") from None


def fast_enabled(fast: bool | None = None) -> bool:
    """The fast inference path is on unless turned off (argument, else ``CELLCLASS_FAST=0``)."""
    if fast is not None:
        return bool(fast)
    return os.environ.get(FAST_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def resolve_device(preference: str | None = None, *, amp: bool | None = None,
                   fast: bool | None = None) -> DevicePolicy:
    """Pick the device.

    ``preference`` is "auto" (default), "cuda", "cuda:N", "mps" or "cpu"; the
    environment variable ``CELLCLASS_DEVICE`` is used when it is None.  Asking for
    a device that is not there is an error, not a silent fallback.
    """
    avoid_triton_llvm_clash()  # every job starts here, possibly inside a running viewer
    pref = (preference or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            dev, reason = torch.device("cuda"), "CUDA GPU found"
        elif _mps_available():
            dev, reason = torch.device("mps"), "Apple GPU (MPS) found"
        else:
            dev, reason = torch.device("cpu"), "no GPU found"
    elif pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CellClassError(
                f"device {pref!r} was asked for but CUDA is not available "
                "(no NVIDIA GPU or a CPU-only torch build); use 'auto' or 'cpu'"
            )
        dev, reason = torch.device(pref), "chosen by the user"
    elif pref == "mps":
        if not _mps_available():
            raise CellClassError("device 'mps' was asked for but Apple MPS is not available")
        dev, reason = torch.device("mps"), "chosen by the user"
    elif pref == "cpu":
        dev, reason = torch.device("cpu"), "chosen by the user"
    else:
        raise CellClassError(f"unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    on_cuda = dev.type == "cuda"
    cpu_bf16 = dev.type == "cpu" and cpu_supports_bf16()
    use_amp = on_cuda if amp is None else bool(amp and (on_cuda or cpu_bf16))
    amp_dtype = None
    if use_amp and on_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif use_amp:  # asked for on a CPU with native bf16 (AVX512-BF16 / AMX)
        amp_dtype = torch.bfloat16
    compile_ = os.environ.get(COMPILE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")
    return DevicePolicy(device=dev, amp=use_amp, amp_dtype=amp_dtype, channels_last=on_cuda, reason=reason,
                        inference_channels_last=dev.type in ("cuda", "cpu"),
                        fast_inference=fast_enabled(fast), compile_inference=compile_ and fast_enabled(fast),
                        cpu_bf16=cpu_bf16, recheck_margin=_recheck_margin())
