"""The parity weights of SPEC section 1: every weight of a module rebuilt from its name, shape and the set's seed.

The published code's outputs in tests/reference/ were made with these weights, so the tests fill a module with
`fill(module, tag, seed)` instead of storing its weights. Integer arithmetic (uint64, wrapping) and one rounding to
float32 make the values identical on every machine.
"""
import math
import zlib

import numpy as np
import torch

GOLDEN, MIX1, MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def formula_value(name, shape, seed):
    """float64 values of the entry `name` (module tag + '.' + state-dict key) of the given shape, row-major."""
    n = math.prod(shape)
    key = (zlib.crc32(name.encode("utf-8")) + seed * 1000003) % 2 ** 32
    with np.errstate(over="ignore"):
        x = (np.arange(n, dtype=np.uint64) + np.uint64(key << 32)) * GOLDEN
        x ^= x >> np.uint64(30)
        x *= MIX1
        x ^= x >> np.uint64(27)
        x *= MIX2
        x ^= x >> np.uint64(31)
    u = (x >> np.uint64(40)).astype(np.float64) / 2 ** 23 - 1
    if name.endswith("running_var"):
        value = 1 + 0.25 * u
    elif name.endswith("running_mean"):
        value = 0.05 * u
    elif len(shape) >= 2:
        value = u * math.sqrt(6 / math.prod(shape[1:]))
    elif name.endswith("weight"):
        value = 1 + 0.1 * u
    else:
        value = 0.02 * u
    return value.reshape(shape)


def parity_state_dict(state_dict, tag, seed):
    """A copy of `state_dict` with every floating-point entry replaced by the formula's float32 tensor."""
    return {k: torch.from_numpy(formula_value(f"{tag}.{k}", tuple(v.shape), seed).astype(np.float32))
            if v.is_floating_point() else v.clone() for k, v in state_dict.items()}


def fill(module, tag, seed):
    """Load the parity weights of module tag `tag` into `module` (strictly) and return it."""
    module.load_state_dict(parity_state_dict(module.state_dict(), tag, seed), strict=True)
    return module
