"""train.py never replaces an earlier run's files silently, stops on a signal with a non-zero status (at once in
set-up, after the current step in training), resumes only the same run (same data; changed settings applied and
logged), and reports a full disk while writing a checkpoint in one line, leaving nothing partial."""
import json
import os
import shutil
import signal
import tempfile

import pytest
import torch

import train
from utils.checkpoint import WriteError
from utils.images import read_image, write_image

FULL = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), where every write fails "
                          "with 'No space left on device'")


@pytest.fixture(scope="module")
def encodings(tmp_path_factory):
    """One encoding cache for every run of this module (the database images are the same in all)."""
    return tmp_path_factory.mktemp("encoding")


@pytest.fixture
def run(tiny_dataset, tmp_path, facenet_file, retinaface_weights, vgg_file, encodings):
    """run(*extra, ckpt="ckpt", log="log", data=tiny_dataset): train.main on a quick CPU run (32x32, batch 2:
    3 iterations an epoch) into tmp_path/ckpt and tmp_path/log; returns its exit status (0, or SystemExit's code)."""
    def make(*extra, ckpt="ckpt", log="log", data=tiny_dataset):
        argv = ["--dataset_root", str(data), "--contrast_positive_path", str(data / "Contrast/high"),
                "--contrast_negative_path", str(data / "Contrast/low"), "--checkpoint_root", str(tmp_path / ckpt),
                "--log_path", str(tmp_path / log / "train.txt"), "--database_root", str(tmp_path / "database"),
                "--encoding_root", str(encodings), "--facenet_checkpoint", str(facenet_file),
                "--retinaface_checkpoint", str(retinaface_weights), "--vgg_checkpoint", str(vgg_file),
                "--crop_size", "32", "--epoch_num", "1", "--num_workers", "0", "--device", "cpu",
                "--memory_format", "contiguous", "--log_every", "1", *extra]
        try:
            train.main(argv)
        except SystemExit as e:
            return e.code
        return 0
    return make


def snapshot(*folders):
    """{path: bytes} of every file under the folders."""
    return {os.path.join(d, name): open(os.path.join(d, name), "rb").read()
            for folder in folders for d, _, names in os.walk(folder) for name in names}


def test_a_new_run_never_replaces_an_earlier_one_silently(run, tmp_path):
    assert run("--max_iters", "1") == 0
    (tmp_path / "ckpt/epoch7.pth").write_bytes(b"an earlier, longer run")  # what a new run would leave mixed in
    before = snapshot(tmp_path / "ckpt", tmp_path / "log/tensorboard")

    for ckpt, first in (("ckpt", "ckpt/epoch7.pth"),  # the same folders
                        ("other", "log/tensorboard/events.out.tfevents.")):  # the earlier curves would be hidden
        message = run(ckpt=ckpt)
        assert isinstance(message, str) and message.startswith(f"error: {tmp_path / first}") and "\n" not in message
        assert "files of an earlier run; continue it with --resume, or start over with --overwrite" in message
    assert snapshot(tmp_path / "ckpt", tmp_path / "log/tensorboard") == before
    assert not (tmp_path / "other").exists()
    assert run("--overwrite", "--resume") == "error: --overwrite starts over, --resume continues: use one of them"

    assert run("--max_iters", "2", "--overwrite") == 0  # starts over: the earlier run's files are gone
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["resume.pth"]
    assert torch.load(tmp_path / "ckpt/resume.pth", weights_only=True)["batch"] == 2
    assert len(os.listdir(tmp_path / "log/tensorboard")) == 1
    log = (tmp_path / "log/train.txt").read_text()
    assert log.startswith("training on cpu")  # appended to, never replaced
    assert "--overwrite: removed 3 files of an earlier run" in log  # resume.pth, epoch7.pth, one event file
    record = json.loads((tmp_path / "log/run.json").read_text())
    assert record["args"]["overwrite"] and len(record["earlier"]) == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_set_up_stops_at_once_and_writes_nothing(run, tmp_path, monkeypatch, signum):
    assert run("--max_iters", "1") == 0
    before = snapshot(tmp_path / "ckpt", tmp_path / "log/tensorboard")
    steps, load_vgg16 = [], train.load_vgg16

    def signalled(*args):  # the signal comes while the networks load, as Ctrl-C in the first seconds would
        os.kill(os.getpid(), signum)
        return load_vgg16(*args)
    monkeypatch.setattr(train, "load_vgg16", signalled)
    monkeypatch.setattr(train, "train_step", lambda *args, **kwargs: steps.append(1))
    assert run("--resume") == 128 + signum
    assert steps == [] and snapshot(tmp_path / "ckpt", tmp_path / "log/tensorboard") == before
    last = (tmp_path / "log/train.txt").read_text().splitlines()[-1]
    assert last == (f"interrupted by {signal.Signals(signum).name} before training started; nothing was written to "
                    f"{tmp_path / 'ckpt'}")
    assert not isinstance(signal.getsignal(signum), train.Signals)  # the handlers of before are back


@pytest.mark.parametrize("signals", [1, 2], ids=["one signal", "two signals"])
def test_a_signal_in_training_saves_a_resume_point_and_exits_non_zero(run, tmp_path, monkeypatch, signals):
    train_step, steps = train.train_step, []

    def signalled(*args, **kwargs):  # Ctrl-C during the second step (twice: impatient, it stops at once)
        steps.append(1)
        if len(steps) == 2:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return train_step(*args, **kwargs)
    monkeypatch.setattr(train, "train_step", signalled)
    assert run("--save_every", "1") == 130
    state = torch.load(tmp_path / "ckpt/resume.pth", weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 3 - signals) and len(steps) == 2
    assert not (tmp_path / "ckpt/epoch0.pth").exists()
    resume = tmp_path / "ckpt/resume.pth"
    assert (tmp_path / "log/train.txt").read_text().splitlines()[-1] == (
        f"stopped at epoch 0 iteration 2 by SIGINT; continue with --resume ({resume})" if signals == 1 else
        f"interrupted by SIGINT in training (last resume point: {resume})")


def test_resume_refuses_other_data_and_applies_changed_settings(run, tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    assert run("--max_iters", "1", data=data) == 0
    resume = tmp_path / "ckpt/resume.pth"
    written = resume.read_bytes()

    message = run("--resume", "--crop_size", "64", data=data)
    assert message == (f"error: {resume}: written for --crop_size 32, this run has 64; resume with the same data "
                       "and settings")
    image = data / "LaPa-Face/underexposed" / sorted(os.listdir(data / "LaPa-Face/underexposed"))[0]
    write_image(read_image(image) // 2, str(image))  # another data set of the same size: one image changed
    message = run("--resume", data=data)
    assert message.startswith(f"error: {resume}: written for other training files than {data / 'LaPa-Face'}")
    assert "\n" not in message and resume.read_bytes() == written
    shutil.rmtree(data)
    shutil.copytree(tiny_dataset, data)  # the same files again (new modification times): accepted

    assert run("--resume", "--max_iters", "1", "--lr", "0.001", "--weight_decay", "0", data=data) == 0
    assert (f"settings changed since {resume} was written (this run uses the new ones): --lr 0.0001 -> 0.001, "
            "--weight_decay 0.0001 -> 0.0\n") in (tmp_path / "log/train.txt").read_text()
    state = torch.load(resume, weights_only=True)
    assert state["batch"] == 2 and state["args"]["lr"] == 0.001
    assert [(g["lr"], g["weight_decay"]) for g in state["optimizer"]["param_groups"]] == [(0.001, 0.0)]
    assert json.loads((tmp_path / "log/run.json").read_text())["args"]["lr"] == 0.001


@FULL
def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_leaves_nothing_partial(run, tmp_path, monkeypatch):
    mkstemp, saves = tempfile.mkstemp, []

    def full_after_one_save(*args, **kwargs):  # the checkpoint folder's disk fills up after the first save
        fd, path = mkstemp(*args, **kwargs)
        if os.path.dirname(path) == str(tmp_path / "ckpt"):
            saves.append(path)
            if len(saves) > 1:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)  # every write: No space left on device
        return fd, path
    monkeypatch.setattr(tempfile, "mkstemp", full_after_one_save)
    message = run("--save_every", "1")
    resume = tmp_path / "ckpt/resume.pth"
    assert message == (f"error: {resume}: cannot write (No space left on device); training stopped (last resume "
                       f"point: {resume})")
    assert (tmp_path / "log/train.txt").read_text().splitlines()[-1] == message
    assert os.listdir(tmp_path / "ckpt") == ["resume.pth"]  # no temporary file left
    state = torch.load(resume, weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 1)  # the last good one


@FULL
def test_a_full_disk_under_the_log_is_one_line():
    log = train.Log("/dev/full")
    with pytest.raises(WriteError) as error:
        log("epoch 0 iter 1/3 ...")
    assert error.value.line == "/dev/full: cannot write (No space left on device)" and error.value.__cause__ is None
    with pytest.raises(SystemExit) as stop:
        log.fail("the run's own error")
    assert stop.value.code == "error: the run's own error"  # still said, although the log cannot take it
