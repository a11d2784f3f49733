"""torch.distributed set-up for torchrun launches; a plain `python train.py` stays a single process.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the process group starts with NCCL on CUDA
and gloo on the CPU. `global_sum` is the only collective the objective needs: the published losses are not
means over images (ratios of means, a BxB broadcast), so each is computed from sums over the whole global
batch, which makes N ranks x batch b give exactly the gradient of one process with batch N*b.
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.runtime import resolve_device


def setup(device_name="auto", timeout_minutes=60):
    """(rank, world_size, device). Starts the process group when launched by torchrun; a collective that waits
    longer than `timeout_minutes` for the other ranks (rank 0 building a face database or validating while the
    others wait at a barrier) ends the run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        device = resolve_device(device_name)
        if device.type == "cuda" and device.index is not None:  # cuda:N: streams and events default to cuda:N
            torch.cuda.set_device(device)
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), world, device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def world_size():
    """Number of processes of the run (1 without torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def global_sum(x):
    """Sum of a tensor over all ranks, differentiable (the gradient is summed back); x itself when single-process."""
    if not is_distributed():
        return x
    import torch.distributed.nn.functional as dnn
    return dnn.all_reduce(x)


def barrier():
    if is_distributed():
        dist.barrier()


def gather(items):
    """The lists `items` of all ranks joined in rank order, on every rank; `items` itself when single-process."""
    if not is_distributed():
        return items
    lists = [None] * dist.get_world_size()
    dist.all_gather_object(lists, items)
    return [x for part in lists for x in part]


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def any_rank(flag):
    """True on every rank when `flag` is true on any (a signal seen by one process stops them all together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return bool(t.item())
