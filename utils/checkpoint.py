"""Checkpoint I/O: one loader for every published format, and atomic writes."""
import hashlib
import os
import pickle
import re
import tempfile

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or does not fit the model it is loaded into."""


def read_checkpoint(path, source_hint=""):
    """torch.load(path, weights_only=True) on the CPU, with one-line errors naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        hint = f" {source_hint}" if source_hint else ""
        raise CheckpointError(f"{path}: checkpoint not found.{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, truncated zip, not a checkpoint at all
        raise CheckpointError(f"{path}: not a readable weights-only PyTorch checkpoint ({_reason(e)})") from None


def _reason(e):
    """torch.load's error in one line, in whole sentences: for a pickle that needs code, the global it names and
    PyTorch's warning that a full load can result in arbitrary code execution; otherwise its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # PyTorch's messages hold terminal colour codes
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if isinstance(e, pickle.UnpicklingError):
        sentences = [s for line in lines for s in re.split(r"(?<=\.)\s+", line)]
        named = [s.split("error: ", 1)[1] for s in sentences if s.startswith("WeightsUnpickler error: ")]
        warning = [s for s in sentences if "arbitrary code" in s or "trusted source" in s]
        if named or warning:
            return " ".join(named[:1] + warning)
    return lines[0] if isinstance(e, RuntimeError) else f"{type(e).__name__}: {lines[0]}"


def unwrap_state_dict(obj, container="bare", strip_prefix=""):
    """Take the state dict out of a loaded checkpoint: 'bare', or the name of the key that holds it."""
    if container != "bare":
        if not (isinstance(obj, dict) and container in obj):
            raise TypeError(container)
        obj = obj[container]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TypeError(f"expected {'a bare state dict' if container == 'bare' else repr(container) + ' holding a state dict'}")
    if strip_prefix:
        obj = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in obj.items()}
    return obj


def load_weights(model, path, container="bare", strip_prefix="", ignore_prefixes=(), source_hint=""):
    """Load a checkpoint file into `model` strictly; returns the model.

    container: 'bare' (the file is the state dict) or the key holding it (e.g. 'model_state').
    strip_prefix: removed from every key (e.g. 'module.' of DataParallel files).
    ignore_prefixes: extra keys allowed in the file and dropped (e.g. FaceNet's 'classifier.').
    """
    obj = read_checkpoint(path, source_hint)
    kind = "a bare state dict" if container == "bare" else f"a dict with {container!r} holding a state dict"
    try:
        state = unwrap_state_dict(obj, container, strip_prefix)
    except TypeError:
        raise CheckpointError(f"{path}: expected {kind} of {type(model).__name__}, found {_describe(obj)}") from None
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))} if ignore_prefixes else state
    check_state_dict(model, state, f"{path}: expected {kind} of {type(model).__name__}")
    check_finite(state, path)
    model.load_state_dict(state, strict=True)
    return model


def check_state_dict(model, state, what):
    """Raise CheckpointError naming the first missing/unexpected key or shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise CheckpointError(f"{what}; " + ", ".join(parts))
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{what}; key {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")


def check_finite(state, where):
    """Raise CheckpointError naming the first floating-point tensor of a state dict that holds NaN or Inf."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}: tensor {k} holds NaN or infinite values (diverged or damaged weights, "
                                  "which give black or meaningless outputs)")


def weights_sha256(model):
    """sha256 of a network's state dict (names, dtypes, shapes and values, whatever the device or memory layout)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        h.update(f"{k}\0{v.dtype}\0{tuple(v.shape)}\0".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _describe(obj):
    if isinstance(obj, dict):
        return f"a dict with keys {list(obj)[:5]}"
    return type(obj).__name__


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import: os.umask can only be read by setting it


def plain_file_mode():
    """The permissions a plain open() gives a new file under the user's umask (typically 0o644)."""
    return 0o666 & ~_UMASK


class WriteError(OSError):
    """OSError(errno, strerror, path) of a file that could not be written (a full disk, say), without the errors
    chained behind it; nothing partial was left. `line` says it in one line: 'PATH: cannot write (REASON)'."""

    @property
    def line(self):
        return f"{self.filename}: cannot write ({self.strerror})"


def atomic_write(path, write, prefix=".tmp-", fsync=True):
    """write(binary file object) into a hidden temporary file beside `path` (its name starts with `prefix`), flush
    it to disk, then rename it over `path`: a run killed at any point leaves the old file or the new one, never a
    broken one. fsync=False leaves the flush to disk to the system: a killed run still leaves no broken file, a
    system crash may. A write that fails on the file system (a full disk, also when torch.save reports it as a
    RuntimeError) raises WriteError after removing the temporary file."""
    path = str(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix)  # short: `path`'s own may be near the 255-byte limit
    except OSError as e:  # no inode left, say
        raise WriteError(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, plain_file_mode())  # not mkstemp's 0600
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error(e) if isinstance(e, Exception) and not isinstance(e, WriteError) else None
        if cause is None or cause.errno is None:  # an interruption, an encoder's refusal, a bug: as it is
            raise
        raise WriteError(cause.errno, cause.strerror or str(cause), path) from None


def _os_error(e):
    """The OSError that `e` is or that led to it (torch.save's RuntimeError after a failed write), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def atomic_save(obj, path):
    """torch.save through atomic_write."""
    atomic_write(path, lambda f: torch.save(obj, f))
