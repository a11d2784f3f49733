"""What a user watches while training runs: TensorBoard curves and pictures, the run record, the progress bar."""
import json
import os
import platform
import subprocess
import sys
from datetime import datetime

import torch
import torchvision
from tqdm import tqdm

from utils.checkpoint import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Board:
    """TensorBoard event files in log_dir, through torch.utils.tensorboard, written by the main process only (every
    call does nothing elsewhere). purge_step is the first step this run writes: TensorBoard hides what an earlier,
    interrupted run wrote from that step on, so that a resumed run's curves continue without doubles."""

    def __init__(self, log_dir, main=True, purge_step=None):
        self.writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter  # imported only here: it takes about a second
            self.writer = SummaryWriter(log_dir, purge_step=purge_step, flush_secs=10)

    def scalars(self, step, values, prefix):
        """One scalar per (name, number) of values, tagged prefix/name."""
        if self.writer:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def image(self, tag, picture, step):
        """An HxWx3 uint8 picture."""
        if self.writer:
            self.writer.add_image(tag, picture, step, dataformats="HWC")

    def flush(self):
        if self.writer:
            self.writer.flush()

    def close(self):
        if self.writer:
            self.writer.close()


def git_commit():
    """(commit of the code's git repository, whether tracked files differ from it), or (None, None) outside one."""
    def git(*args):
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=30, check=True).stdout
    try:
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):  # git absent, not a repository, no commit yet
        return None, None


def write_run_record(path, args, device, world):
    """path (JSON): every argument, the start time, the git commit, torch / torchvision / CUDA versions, the device
    and the number of processes. The records of earlier starts in the same folder (a resumed run's first start,
    say) are kept, oldest first, under 'earlier'."""
    commit, dirty = git_commit()
    record = {"args": vars(args), "start": datetime.now().astimezone().isoformat(timespec="seconds"),
              "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
              "torchvision": torchvision.__version__, "cuda": torch.version.cuda, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or platform.machine(), "processes": world, "python": platform.python_version()}
    earlier = []
    if os.path.isfile(path):
        try:
            with open(path) as f:
                previous = json.load(f)
            earlier = previous.pop("earlier", []) + [previous]
        except (OSError, ValueError):  # unreadable or not JSON: kept aside, never lost
            os.replace(path, path + ".unreadable")
    record["earlier"] = earlier
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=1, default=str).encode()))


def progress(images, done, epoch, main=True):
    """The tqdm bar of one epoch, counting images (images/s, time left), on the main process and only when stdout
    is a terminal, so that logs written to files stay clean."""
    return tqdm(total=images, initial=done, unit="img", desc=f"epoch {epoch}", file=sys.stdout, leave=False,
                dynamic_ncols=True, disable=not (main and sys.stdout.isatty()))
