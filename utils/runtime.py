"""Run-time set-up shared by the scripts: device choice, seeding, timing and the memory allocator."""
import ctypes
import random
import statistics
import sys
import time

import numpy as np
import torch


def resolve_device(name="auto"):
    """'auto' picks CUDA, then Apple MPS, then the CPU; 'cpu', 'cuda', 'cuda:N' and 'mps' are checked to exist on
    this machine. ValueError, in one line that says what is there, for a device it does not have."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: auto, cpu, cuda, cuda:N or mps is allowed") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device that torch {torch.__version__} can use; "
                         "use --device cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices, "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {name}: Apple MPS is not available here; use --device cpu (or auto)")
    return device


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def synchronize(device):
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(fn(), wall seconds of the call), the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def median_seconds(fn, device, repeat):
    """Median wall time of `repeat` calls of fn after one warm-up call."""
    fn()
    return statistics.median(timed(fn, device)[1] for _ in range(repeat))


def keep_freed_memory():
    """Make glibc keep freed memory for reuse instead of handing it back to the system (Linux only; elsewhere a
    no-op). Activations of 30 MB and more are otherwise mapped afresh and zeroed page by page at every
    allocation: in a training step, about 2 GB of fresh pages (10-20 % of its time on a CPU). The resident memory
    then stays at its peak until the process ends. Returns whether the allocator took the settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, say): nothing to tune
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # an int: a larger threshold would wrap around to 0
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)  # large blocks come from the heap, where freed ones are reused
                and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))  # and up to 2 GiB free at its top stay mapped
