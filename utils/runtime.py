"""Run-time set-up shared by the scripts: device choice, numeric precision, seeding, timing, copies between host and
device that do not wait for the device's queue, threads for work outside the GIL, and the memory allocator."""
import ctypes
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from utils.checks import PRECISIONS


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


def check_device(name):
    """The device `name` (resolve_device), or exit with one line when this machine has no such device. It starts
    nothing: a script may check first and fork processes before the device starts."""
    try:
        return resolve_device(name)
    except ValueError as e:
        sys.exit(f"error: {e}")


def start_device(name, precision):
    """The device `name` (check_device) with `precision` set (set_precision): the start of each script's work."""
    device = check_device(name)
    if device.type == "cuda" and device.index is not None:  # cuda:N: streams and events default to cuda:N
        torch.cuda.set_device(device)
    set_precision(precision)
    return device


def set_precision(precision):
    """Set the process-wide TF32 switch of CUDA's float32 convolutions for `precision` (fp32: off; tf32 and bf16: on,
    PyTorch's default). Matrix products stay IEEE float32 (PyTorch's default too): the face crops' sampling grids
    are matrix products, which TF32 would move by a tenth of a pixel."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = False


def autocast(device, precision):
    """The autocast context of `precision` on `device`: bf16 autocast for bf16, none otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def to_device(tensor, device):
    """`tensor` (host memory) on `device`. On CUDA it goes through pinned memory without blocking: the host does
    not wait for the device's queue (a plain copy of pageable memory does)."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def to_host(tensor):
    """A copy of `tensor` in host memory (a new tensor, also where `tensor` is there already). On CUDA the host waits
    for the device to finish the work queued before the copy."""
    return tensor.to("cpu", copy=True)


def start_to_host(tensor, share=False):
    """(host tensor, wait): starts copying `tensor` to the host and returns at once; the copy is complete when wait()
    returns. On CUDA the copy goes into pinned memory behind the work already queued on the tensor's device (its
    current stream, also where that is not the current device), and wait() waits for that work and the copy, not
    for what the host queues in between; elsewhere the copy is made at once. share=True: a tensor on the host
    already is returned as it is (no copy: a large image's would cost 3 bytes per pixel)."""
    if share and tensor.device.type == "cpu":
        return tensor, lambda: None
    if tensor.device.type != "cuda":
        return to_host(tensor), lambda: None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(tensor.device))  # the stream the copy was queued on
    return host, done.synchronize


_threads = None


def parallel_map(fn, items):
    """[fn(x) for x in items], computed by a pool of as many threads as CPUs (made at the first call): for work that
    runs outside the GIL, such as OpenCV's and NumPy's on whole images."""
    global _threads
    if len(items) < 2:
        return [fn(x) for x in items]
    if _threads is None:
        _threads = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="parallel_map")
    return list(_threads.map(fn, items))


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


def memory_bytes():
    """The memory this process can have, in bytes: the machine's physical memory, or the container's limit where
    that is lower (cgroup v2 or v1); None where neither can be read (Windows)."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                sizes.append(int(f.read().strip()))  # 'max' (no limit) is not a number
        except (OSError, ValueError):
            pass
    return min(sizes) if sizes else None
