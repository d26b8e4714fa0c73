"""Process-wide settings that make PyTorch on the CPU waste less time outside the kernels, and
the precision the hardware runs fastest (`resolve_amp`)."""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

from avlib.core.errors import ParameterError
from avlib.core.params import amp as check_amp

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_TUNED = False


def tune_allocator() -> bool:
    """Let glibc's malloc keep freed activation memory for reuse; returns True when applied.

    By default glibc serves every block above a sliding threshold with a fresh mmap and gives
    it back on free, so each forward pass of R(2+1)D at 16x64x64 (batch 8) page-faults in
    about 1.9 GB of zeroed memory (fp32; 0.15 GB in bf16/channels_last) and spends a second
    in the kernel. Raising the mmap threshold to its ceiling (32 MB), padding the heap top
    and not trimming it (the same remedy as PyTorch's CPU tuning guide's jemalloc/tcmalloc,
    without a new dependency) removes most of it: +7 % training, +12 % inference here.
    The cost: the process keeps up to 1 GB of freed memory instead of returning it.
    A no-op outside Linux/glibc."""
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):       # musl or another libc: nothing to tune
        return False
    _TUNED = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
                  and mallopt(_M_TOP_PAD, 256 << 20))
    return _TUNED


# CPU flags (Linux /proc/cpuinfo) of instructions that compute in bf16. Without them oneDNN
# emulates bf16 and autocast is two orders of magnitude slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags this CPU reports; empty when `cpuinfo` is unreadable (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The NATIVE_BF16_FLAGS this CPU reports; [] when it reports none or `cpuinfo` is unreadable."""
    flags = cpu_flags(cpuinfo)
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a scheduler such as SLURM sets),
    else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # no affinity on this platform
        return os.cpu_count() or 1


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """'<cores>-core <model>, <vector units>': what CPU timings and the bf16 choice depend on, e.g.
    '2-core AMD EPYC, AVX2, no AVX-512' or '8-core Intel Xeon, AVX-512 with bf16'."""
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path(cpuinfo).read_text(errors="replace").splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu_flags(cpuinfo)
    if not flags:
        units = "instruction set unknown"
    elif "avx512f" in flags:
        units = "AVX-512 with bf16" if cpu_bf16_flags(cpuinfo) else "AVX-512, no bf16"
    else:
        units = "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{os.cpu_count()}-core {model}, {units}"


def resolve_amp(amp: bool | str, device, *, cpuinfo: str | Path = "/proc/cpuinfo", log=None) -> bool:
    """Whether to run bf16 autocast on `device` (a torch.device or its name).

    amp=True or False is returned as given; amp="auto" is True where the hardware computes in
    bf16 natively: a CUDA device that supports bf16, or a CPU with avx512_bf16 or amx_bf16
    (read from `cpuinfo`); else False (fp32). With `log`, one line says what was chosen and why.
    Raises ParameterError for any other `amp`."""
    import torch  # deferred: cpu_description serves the reference notes without torch

    check_amp("amp", amp)
    device = torch.device(device)
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "CUDA"
        hardware = f"{name} {'computes' if native else 'does not compute'} in bf16"
    elif device.type == "cpu":
        flags = cpu_bf16_flags(cpuinfo)
        native = bool(flags)
        hardware = f"this CPU has {' and '.join(flags)}" if native else "this CPU has no avx512_bf16 or amx_bf16"
    else:
        native, hardware = False, f"{device.type}: bf16 not known to be native"
    chosen = native if amp == "auto" else amp
    if log is not None:
        how = "bf16 autocast" if chosen else "fp32"
        if amp == "auto":
            log(f"precision: {how} (amp: auto, {hardware})")
        elif amp and not native:
            log(f"warning: amp: true, but {hardware}: bf16 is emulated, about 100x slower than fp32; "
                f"set amp: auto or false")
        else:
            log(f"precision: {how} (amp: {str(amp).lower()})")
    return chosen


def pick_device(device: str):
    """The torch.device for `device` ('auto' takes CUDA when present). Raises ParameterError
    naming `device` when it asks for CUDA on a machine without it."""
    import torch  # deferred, as in resolve_amp

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"parameter `device` is {device!r} but no CUDA device is available")
    return torch.device(device)
