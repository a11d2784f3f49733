"""torchrun with gloo on the CPU: 2 ranks x batch b step exactly like 1 process x batch 2b; only rank 0 writes."""
import os
import shutil
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_two_ranks_step_like_one_process_with_the_whole_batch(train_args, tmp_path):
    layout = ("--memory_format", "channels_last")  # DDP checks that every rank's parameters have the same strides
    single = _run([sys.executable, os.path.join(ROOT, "train.py"),
                   *train_args("--batch_size", "2", "--max_iters", "1", *layout, ckpt="single")], tmp_path)
    shutil.rmtree(tmp_path / "log")  # a run of its own (its own log and TensorBoard curves)
    ranks = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  os.path.join(ROOT, "train.py"),
                  *train_args("--batch_size", "1", "--max_iters", "1", *layout, ckpt="ddp")], tmp_path)
    one = torch.load(tmp_path / "single/resume.pth", weights_only=True)
    two = torch.load(tmp_path / "ddp/resume.pth", weights_only=True)
    assert (two["epoch"], two["batch"]) == (0, 1)
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=0, atol=1e-5, msg=k)
    # only rank 0 wrote: one resume file, no stray temporaries, each log line once
    assert sorted(os.listdir(tmp_path / "ddp")) == ["resume.pth"]
    log = (tmp_path / "log/train.txt").read_text().splitlines()
    assert sum(line.startswith("training on") for line in log) == 1, log
    assert ranks.count("training on") == 1 and "2 processes" in ranks
    assert len(os.listdir(tmp_path / "log/tensorboard")) == 1  # an event file of rank 0 alone
    assert "training on" in single
