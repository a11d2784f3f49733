"""Counting, on the CPU, what would make the host wait for a GPU.

On CUDA the host waits for the device's queue whenever it needs a value computed there (`.item()`, `bool()`,
`.tolist()`, `.cpu()`, `nonzero`, boolean-mask indexing, NMS) and when it copies host data to the device without
`non_blocking` (`torch.tensor(..., device=...)`, a list used as an index). On the CPU none of that waits, but the
calls are the same: `HostSyncs` sees them (torch function and dispatch modes) and counts those that touch *device
data* (the tensors it is given, and everything computed from them), so a test can bound them. Where the device is
the CPU, `.to(device)` cannot be told from `.to("cpu")`: a copy to the host is seen as `.cpu()` or as
`.to("cpu", copy=True)` (utils.runtime.to_host), which returns a new tensor whose use by the host is not counted.
"""
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

# aten ops whose result the host must wait for (a value read, or an output size that depends on the data)
READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique_dim", "_unique", "_unique2", "unique_consecutive",
         "equal", "nms", "repeat_interleave", "bincount", "histc"}
TO_HOST = {"tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__"}
FROM_DATA = {"tensor", "as_tensor", "new_tensor"}


def _tensors(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _name(func):
    return getattr(func, "__name__", str(func)).split(".")[0]


class _Propagate(TorchDispatchMode):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        if any(t in self.owner.device_data for t in inputs):
            name = func._opname
            bool_index = name in ("index", "index_put", "index_put_") and any(
                t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1]))
            if (name in READS or bool_index) and not self.owner.reading:
                self.owner.count[f"aten.{name}"] += 1
            for t in _tensors(out):
                self.owner.device_data[t] = True
        return out


class _Calls(TorchFunctionMode):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        owner = self.owner
        self_is_device = bool(args) and isinstance(args[0], torch.Tensor) and args[0] in owner.device_data
        if self_is_device and (name in TO_HOST or (name == "to" and _to_cpu(args, kwargs))):
            owner.count[f"Tensor.{name}"] += 1
            owner.reading = True  # counted here, not again as the aten op it runs
            try:
                out = func(*args, **kwargs)
            finally:
                owner.reading = False
            if name in ("cpu", "to") and out is not args[0]:
                owner.device_data.pop(out, None)  # a host copy: what the host does with it is its own business
            return out
        if name in FROM_DATA and ("device" in kwargs or name == "new_tensor" and self_is_device):
            owner.count[f"torch.{name}(device=...)"] += 1  # a blocking upload on CUDA
        if name in ("__getitem__", "__setitem__", "index_put_") and self_is_device and _has_list(args[1]):
            owner.count[f"Tensor.{name}(list)"] += 1  # the list is uploaded (blocking) as an index tensor
        if name == "to" and not self_is_device and args and isinstance(args[0], torch.Tensor) and \
                _to_device(args, kwargs) and not kwargs.get("non_blocking", False):
            owner.count["Tensor.to(device) of host data"] += 1
        return func(*args, **kwargs)


def _to_cpu(args, kwargs):
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu" and kwargs.get("copy", False)


def _to_device(args, kwargs):
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device))


def _has_list(index):
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, list) for i in items)


class HostSyncs:
    """`with HostSyncs(*modules_and_tensors) as syncs:` counts in `syncs.count` (a Counter by call) every read of
    device data by the host and every blocking upload; device data are the given tensors, the parameters and
    buffers of the given modules, and every tensor computed from them. A copy to the host made with
    `.to("cpu", copy=True)` counts once, and what is computed from the copy no more."""

    def __init__(self, *sources):
        self.device_data = WeakIdKeyDictionary()
        self.count = Counter()
        self.reading = False
        for s in sources:
            for t in (list(s.parameters()) + list(s.buffers()) if isinstance(s, torch.nn.Module) else _tensors(s)):
                self.device_data[t] = True

    def total(self):
        return sum(self.count.values())

    def __enter__(self):
        self.modes = [_Calls(self), _Propagate(self)]
        for m in self.modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self.modes):
            m.__exit__(*exc)
