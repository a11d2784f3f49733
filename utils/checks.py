"""Checks of the scripts' arguments, made before any work and before torch is imported (so that --help and every
argument error answer at once): each failure is one line, 'error: ...', that says what is allowed (exit status 1).

    p = ArgumentParser(description=__doc__)     # --help: the docstring as written, then each flag's help and default
    p.add_argument("--batch_size", type=integer(1), default=1, help="...")  # 'an integer >= 1 is allowed, not '-2''
    p.add_argument("--device", type=device_name, default="auto", help="...")
    check_paths(reads=[("--underexposed_path", src)], writes=[("--enhanced_path", dst)], logs=[("--log_path", log)])
    check_checkpoints([("--enhance_checkpoint", path, "Low-FaceNet.pth")])

A folder or checkpoint that is missing names the command that fixes it (`python -m utils.download ...`).
"""
import argparse
import math
import os
import re
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED_DATASETS = ("LaPa-Face", "Contrast", "CASIA-Test", "LaPa-Test", "LFW", "CelebA-Test")
DATASET_FOLDERS = ("underexposed", "normal", "seg", "high", "low")  # the published sets' sub-folders
BUNDLED_RETINAFACE = os.path.join(ROOT, "tests", "weights", "Retinaface_mobilenet0.25.pth")  # the published detector


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help: the description as written (a script's docstring, with its commands), and each flag's default after
    its help text (where it has a value: not for switches and defaults of None, whose help says what happens)."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if "%(default)" in text or default is None or default is False or default == [] or action.nargs == 0 \
                or default == argparse.SUPPRESS:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr, 'error: argument --tile: ...', without the usage block, and
    whose --help shows the description as written and every flag's default (HelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.exit(f"error: {message} (see --help)")


def integer(low, high=None):
    """argparse type: an int from low to high (no upper bound when high is None)."""
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{allowed} is allowed, not {text!r}")
        return value
    return parse


def number(low, high=math.inf, above=False):
    """argparse type: a finite float >= low (> low with above=True) and <= high."""
    allowed = f"a number {'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if above else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"{allowed} is allowed, not {text!r}")
        return value
    return parse


def device_name(text):
    """argparse type: auto, cpu, cuda, cuda:N or mps (whether the machine has it is checked once torch is imported,
    by utils.runtime.resolve_device)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"auto, cpu, cuda, cuda:N or mps is allowed, not {text!r}")
    return text


def folder_name(text):
    """argparse type: a plain folder name (no path separator, not '.' or '..'), e.g. a data set's name."""
    if text in ("", ".", "..") or "/" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"a folder name without '/' is allowed, not {text!r}")
    return text


def _relation(path, other):
    """'is', 'lies inside' or 'contains' when the two paths (real) overlap, else None."""
    a, b = os.path.realpath(path), os.path.realpath(other)
    common = os.path.commonpath([a, b])
    return "is" if a == b else "lies inside" if common == b else "contains" if common == a else None


def _check_writable(label, path, folder):
    """Exit when `path` (a folder to write in, or a file to append to) cannot be written: the wrong kind of thing
    is there, a regular file stands where a folder above it must be, or the permissions refuse it."""
    if os.path.exists(path) and os.path.isdir(path) != folder:
        sys.exit(f"error: {label} {path} is a {'file' if folder else 'folder'}; a {'folder' if folder else 'file'} "
                 "is needed there")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing != os.path.abspath(path) and not os.path.isdir(existing):
        sys.exit(f"error: {label} {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        sys.exit(f"error: {label} {path} cannot be written: no write permission on {existing}")


def check_paths(reads=(), writes=(), optional_reads=(), logs=()):
    """Exit with one line, before any work, when a run's folders cannot work together.

    reads: (label, folder) that must exist; optional_reads: (label, folder) that are read when they exist;
    writes: (label, folder or None) the run writes in; logs: (label, file) it appends to. A folder to write must
    not be, contain or lie inside a folder read or another folder written (nothing of the input is ever replaced,
    and no output is read back as input); it and the logs must be creatable and writable.
    """
    for label, path in reads:
        if not os.path.isdir(path):
            fix = dataset_fix(path)
            sys.exit(f"error: {path}: folder not found ({label})" + (f"; {fix}" if fix else ""))
    writes = [(label, path) for label, path in writes if path]
    for label, path in writes:
        _check_writable(label, path, folder=True)
    for label, path in logs:
        _check_writable(label, path, folder=False)
    for i, (label, path) in enumerate(writes):
        for other_label, other in [*reads, *optional_reads, *writes[:i], *writes[i + 1:]]:
            relation = _relation(path, other)
            if relation:
                sys.exit(f"error: {label} {path} {relation} {other_label} {other}; every folder a run writes must "
                         "lie apart from the folders it reads and from its other output folders")


def dataset_fix(path):
    """For a missing folder in a published data set (ROOT/NAME itself missing, or one of its published sub-folders
    underexposed, normal, seg, high, low): 'ROOT/NAME is a published data set: fetch it with `python -m
    utils.download --datasets NAME`'; otherwise None."""
    folder = os.path.normpath(path)
    while os.path.basename(folder) not in PUBLISHED_DATASETS:
        if os.path.dirname(folder) in ("", folder):
            return None
        folder = os.path.dirname(folder)
    missing = os.path.normpath(path)
    if os.path.isdir(folder) and not (missing == folder or os.path.dirname(missing) == folder
                                      and os.path.basename(missing) in DATASET_FOLDERS):
        return None
    root = os.path.dirname(folder) or "."
    flag = "" if root == "dataset" else f" --dataset_root {root}"
    return f"{folder} is a published data set: fetch it with `python -m utils.download --datasets " \
           f"{os.path.basename(folder)}{flag}`"


def check_checkpoints(files):
    """Exit with one line, before torch is imported, when a checkpoint is missing. files: (label, path, the name of
    the published file it stands for, or None); the line names the command that fetches the published file and,
    for RetinaFace, the copy that ships with the tests (for trials)."""
    for label, path, published in files:
        if path is None or os.path.isfile(path):
            continue
        fix = ""
        if published:
            fix = "; fetch it with `python -m utils.download`" \
                if os.path.normpath(path) == os.path.join("checkpoint", published) else \
                f"; fetch the published one with `python -m utils.download` (it writes checkpoint/{published})"
        if published == os.path.basename(BUNDLED_RETINAFACE):
            fix += f"; for trials, the published detector ships with the tests: {label} {_shown(BUNDLED_RETINAFACE)}"
        sys.exit(f"error: {path}: checkpoint not found ({label}){fix}")


def _shown(path):
    """path relative to the working folder when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def escape_unprintable_names():
    """Print file names that are not valid UTF-8 (bytes the file system allows) with backslash escapes instead of
    stopping with UnicodeEncodeError, so that every line still names its file."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


PRECISIONS = ("fp32", "tf32", "bf16")


def add_precision_flags(parser, default="tf32"):
    """--precision fp32|tf32|bf16 and --amp (the same as --precision bf16, the flag of earlier versions)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help="CUDA arithmetic: fp32 (IEEE float32 everywhere, the CPU's numbers to rounding), tf32 "
                        "(float32 convolutions on TF32 tensor cores, PyTorch's default and the published code's), bf16 "
                        "(tf32 plus bf16 autocast of the networks); only bf16 changes anything on the CPU")
    parser.add_argument("--amp", dest="precision", action="store_const", const="bf16", help="same as --precision bf16")
