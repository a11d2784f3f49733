"""Training that can be watched: validation every epoch (scored as test.py + eval.py score), best.pth, preview
pictures, TensorBoard events, the run record, the progress bar, and bad validation or training files."""
import io
import json
import re
import shutil
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import eval as evaluate
import nets
import test as test_script
import train
from conftest import ROOT
from nets.enhance import enhance_uint8
from utils.data import TrainSet
from utils.face_database import identity_of
from utils.images import read_image, to_tensor, write_image
from utils.metrics import brightness, psnr, ssim
from utils.monitor import progress
from utils.output_record import RECORD_NAME
from utils.validation import Validation

VAL = "LaPa-Test"  # a recognition set's name, so that eval.py can score the same images
SIZE = 160  # of the validation images


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_dataset):
    """dataset/: LaPa-Face with the first photo of each identity of the tiny set (3 images), LaPa-Test (underexposed,
    normal) with the second, SIZE x SIZE as PNG (so that test.py's outputs are lossless), and Contrast."""
    root = tmp_path_factory.mktemp("watched")
    source = tiny_dataset / "LaPa-Face"
    shutil.copytree(tiny_dataset / "Contrast", root / "Contrast")
    photos = {}
    for path in sorted((source / "normal").iterdir()):
        photos.setdefault(identity_of(path.name), []).append(path)
    for first, second in (names[:2] for names in photos.values()):
        for sub in ("underexposed", "normal"):
            (root / "LaPa-Face" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / sub / first.name, root / "LaPa-Face" / sub / first.name)
            picture = cv2.resize(read_image(source / sub / second.name), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            write_image(picture, str(root / VAL / sub / (second.stem + ".png")))
        (root / "LaPa-Face/seg").mkdir(exist_ok=True)
        shutil.copyfile(source / "seg" / (first.stem + ".png"), root / "LaPa-Face/seg" / (first.stem + ".png"))
    return root


@pytest.fixture(scope="module")
def quick(data, facenet_file, retinaface_weights, vgg_file):
    """Arguments of a quick CPU run on `data` (64x64, batch 1: 3 iterations an epoch, a log line each) writing into
    the folder `out`."""
    def make(out, *extra, dataset_root=data):
        return ["--dataset_root", str(dataset_root), "--contrast_positive_path", str(data / "Contrast/high"),
                "--contrast_negative_path", str(data / "Contrast/low"), "--checkpoint_root", str(out / "ckpt"),
                "--log_path", str(out / "log/train.txt"), "--database_root", str(out / "database"),
                "--encoding_root", str(out / "encoding"), "--facenet_checkpoint", str(facenet_file),
                "--retinaface_checkpoint", str(retinaface_weights), "--vgg_checkpoint", str(vgg_file),
                "--crop_size", "64", "--batch_size", "1", "--num_workers", "0", "--device", "cpu",
                "--memory_format", "contiguous", "--log_every", "1", *extra]
    return make


@pytest.fixture(scope="module")
def runs(tmp_path_factory, quick):
    """Two runs of 2 epochs, one validating on LaPa-Test after each epoch, one without validation."""
    root = tmp_path_factory.mktemp("runs")
    argv = quick(root / "validated", "--epoch_num", "2", "--val_dataset", VAL)
    train.main(argv)
    train.main(quick(root / "plain", "--epoch_num", "2"))
    return {"validated": root / "validated", "plain": root / "plain", "argv": argv}


def validation_lines(log_path):
    """{epoch: {measure: value}, ...} and the best.pth epoch named, of each validation line of a log."""
    found = {}
    for line in log_path.read_text().splitlines():
        m = re.match(r"validation epoch (\d+) on \S+ \(\d+ images\): psnr (\S+) ssim (\S+) brightness (\S+) "
                     r"face_acc (\S+) \(\d+ without a detected face\) \| best: .*best.pth holds epoch (\d+)", line)
        if m:
            found[int(m[1])] = dict(zip(("psnr", "ssim", "brightness", "face_acc"), map(float, m.groups()[1:5])),
                                    best=int(m[6]))
    return found


def events(log_dir):
    """TensorBoard's own reader over every event file of log_dir/tensorboard."""
    reader = EventAccumulator(str(log_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    return reader


def test_validation_scores_as_test_py_and_eval_py_do(runs, data, quick, tmp_path, retinaface_weights, facenet_file):
    run = runs["validated"]
    measured = validation_lines(run / "log/train.txt")
    assert sorted(measured) == [0, 1]
    enhanced = tmp_path / "enhanced"  # test.py with the weights of epoch 1, then eval.py's face identification
    assert test_script.main(["--underexposed_path", str(data / VAL / "underexposed"), "--enhanced_path", str(enhanced),
                             "--enhance_checkpoint", str(run / "ckpt/epoch1.pth"), "--device", "cpu",
                             "--num_workers", "0"]) == 0
    shutil.copytree(data / VAL, tmp_path / "data" / VAL)
    shutil.copytree(enhanced, tmp_path / "data" / VAL / "SOTAs/check")
    assert evaluate.main(["--dataset_name", VAL, "--dataset_root", str(tmp_path / "data"), "--method_name", "check",
                          "--database_root", str(tmp_path / "database"), "--encoding_root", str(tmp_path / "encoding"),
                          "--facenet_checkpoint", str(facenet_file), "--retinaface_checkpoint", str(retinaface_weights),
                          "--device", "cpu", "--num_workers", "0", "--log_path", str(tmp_path / "eval.txt")]) == 0
    top1 = float(re.search(r"top1=(\S+)", (tmp_path / "eval.txt").read_text())[1])
    assert measured[1]["face_acc"] == pytest.approx(top1 / 100, abs=1e-4)
    scores = {"psnr": [], "ssim": [], "brightness": []}
    for path in sorted(p for p in enhanced.iterdir() if p.name != RECORD_NAME):  # the images, not the record
        x, y = to_tensor(read_image(path))[None], to_tensor(read_image(data / VAL / "normal" / path.name))[None]
        scores["psnr"].append(psnr(x, y).item())
        scores["ssim"].append(ssim(x, y).item())
        scores["brightness"].append(brightness(x).item())
    for name, values in scores.items():
        assert measured[1][name] == pytest.approx(np.mean(values), abs=1e-4), name


def test_best_checkpoint_is_the_best_epoch_and_test_py_loads_it(runs, data, tmp_path):
    run = runs["validated"]
    measured = validation_lines(run / "log/train.txt")
    best = measured[1]["best"]
    key = lambda m: (m["face_acc"], m["psnr"])
    assert key(measured[best]) == max(key(m) for m in measured.values())
    assert measured[0]["best"] == 0  # the first validation is the best so far
    written, chosen = torch.load(run / "ckpt/best.pth", weights_only=True), torch.load(
        run / f"ckpt/epoch{best}.pth", weights_only=True)
    assert written.keys() == chosen.keys() and all(torch.equal(written[k], chosen[k]) for k in chosen)
    assert test_script.main(["--underexposed_path", str(data / VAL / "underexposed"), "--enhanced_path",
                             str(tmp_path / "out"), "--enhance_checkpoint", str(run / "ckpt/best.pth"),
                             "--device", "cpu", "--num_workers", "0"]) == 0
    assert len([p for p in (tmp_path / "out").iterdir() if p.name != RECORD_NAME]) == 3
    state = torch.load(run / "ckpt/resume.pth", weights_only=True)
    assert state["best"]["epoch"] == best and state["best"]["dataset"] == VAL


def test_previews_show_input_enhanced_and_normal_rows(runs, data):
    files = sorted((data / VAL / "underexposed").iterdir())
    for epoch in (0, 1):
        picture = read_image(runs["validated"] / f"log/previews/epoch{epoch}.png")
        model = nets.load("enhance", runs["validated"] / f"ckpt/epoch{epoch}.pth")
        assert picture.shape == (3 * SIZE + 2 * 4, 3 * SIZE + 2 * 4, 3)  # 3 images (fewer than the 4 asked)
        for row, path in enumerate(files):
            image = read_image(path)
            (_, enhanced), = enhance_uint8(model, [image], torch.device("cpu"))
            panels = [image, enhanced[0].numpy(), read_image(data / VAL / "normal" / path.name)]
            for column, expected in enumerate(panels):
                top, left = row * (SIZE + 4), column * (SIZE + 4)
                np.testing.assert_array_equal(picture[top:top + SIZE, left:left + SIZE], expected,
                                              err_msg=f"epoch {epoch} row {row} column {column}")
    assert not (runs["plain"] / "log/previews").exists()


def test_tensorboard_holds_the_logged_curves_and_previews(runs):
    run = runs["validated"]
    reader = events(run / "log")
    tags = reader.Tags()
    for name in ["loss", "face_acc", "brightness", "lr", "images_per_s", "contrast_feature", "contrast_brightness",
                 "perceptual", "color", "smooth", "seg_brightness", "face"]:
        assert f"train/{name}" in tags["scalars"], name
    losses = [float(m[1]) for m in re.finditer(r"^epoch \d+ iter \d+/3 loss (\S+)", (run / "log/train.txt").read_text(),
                                                re.M)]
    curve = reader.Scalars("train/loss")
    assert [e.step for e in curve] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in curve] == pytest.approx(losses, abs=1e-4)
    assert [e.value for e in reader.Scalars("train/lr")] == pytest.approx([1e-4] * 6)
    measured = validation_lines(run / "log/train.txt")
    for name in ("psnr", "ssim", "brightness", "face_acc"):
        curve = reader.Scalars(f"val/{name}")
        assert [e.step for e in curve] == [3, 6]
        assert [e.value for e in curve] == pytest.approx([measured[0][name], measured[1][name]], abs=1e-4)
    assert [e.step for e in reader.Images("val/preview")] == [3, 6]
    plain = events(runs["plain"] / "log")
    assert [e.step for e in plain.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert not [tag for tag in plain.Tags()["scalars"] if tag.startswith("val/")]


def test_run_record_holds_arguments_versions_and_commit(runs):
    record = json.loads((runs["validated"] / "log/run.json").read_text())
    assert record["args"] == json.loads(json.dumps(vars(train.parse_args(runs["argv"]))))
    assert record["torch"] == torch.__version__ and record["device"] == "cpu" and record["processes"] == 1
    assert set(record) >= {"start", "torchvision", "cuda", "device_name", "git_commit"} and record["earlier"] == []
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", record["git_commit"])


def test_validation_leaves_the_training_state_as_it_was(runs):
    for epoch in (0, 1):
        validated, plain = (torch.load(runs[run] / f"ckpt/epoch{epoch}.pth", weights_only=True)
                            for run in ("validated", "plain"))
        assert all(torch.equal(validated[k], plain[k]) for k in plain), f"epoch {epoch}"
    assert not (runs["plain"] / "ckpt/best.pth").exists()
    assert "validation" not in (runs["plain"] / "log/train.txt").read_text()


def test_resume_keeps_a_better_best(runs, quick, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["validated"], run)
    state = torch.load(run / "ckpt/resume.pth", weights_only=True)
    state["best"].update(epoch=0, measures={"psnr": 99.0, "ssim": 1.0, "brightness": 0.5, "face_acc": 1.0})
    torch.save(state, run / "ckpt/resume.pth")  # as if epoch 0 had scored better than any epoch can
    best_before = (run / "ckpt/best.pth").read_bytes()
    train.main(quick(run, "--epoch_num", "3", "--val_dataset", VAL, "--resume"))
    log = (run / "log/train.txt").read_text()
    assert re.search(r"best so far: .*best.pth holds epoch 0 \(face_acc 1.0000, psnr 99.0000\)", log)
    assert validation_lines(run / "log/train.txt")[2]["best"] == 0
    assert (run / "ckpt/best.pth").read_bytes() == best_before
    assert torch.load(run / "ckpt/resume.pth", weights_only=True)["best"]["measures"]["psnr"] == 99.0
    reader = events(run / "log")  # the curves go on at the right step
    assert [e.step for e in reader.Scalars("train/loss")] == list(range(1, 10))
    assert [e.step for e in reader.Scalars("val/psnr")] == [3, 6, 9]
    record = json.loads((run / "log/run.json").read_text())
    assert record["args"]["resume"] and len(record["earlier"]) == 1 and not record["earlier"][0]["args"]["resume"]


def _no_normal(val):
    shutil.rmtree(val / "normal")


def _empty(val):
    for path in (val / "underexposed").iterdir():
        path.unlink()


def _unreadable(val):
    next((val / "underexposed").iterdir()).write_bytes(b"not an image")


def _unmatched(val):
    next((val / "normal").iterdir()).rename(val / "normal" / "Someone_Else_0001.png")


VALIDATION_ERRORS = {
    "missing folder": (lambda val: shutil.rmtree(val),
                       r"Val/underexposed: folder not found \(the validation set's underexposed"),
    "without normal/": (_no_normal, r"Val/normal: folder not found \(the validation set's normal"),
    "empty": (_empty, r"Val/underexposed: no validation images"),
    "unreadable image": (_unreadable, r"Val/underexposed/\S+\.png: cannot read image"),
    "no normal image of its name": (_unmatched, r"\.png: no reference image of that name in .*Val/normal"),
}


@pytest.mark.parametrize("case", VALIDATION_ERRORS)
def test_bad_validation_set_stops_before_training_in_one_line(case, data, quick, tmp_path):
    shutil.copytree(data / "LaPa-Face", tmp_path / "data/LaPa-Face")
    shutil.copytree(data / VAL, tmp_path / "data/Val")
    change, pattern = VALIDATION_ERRORS[case]
    change(tmp_path / "data/Val")
    with pytest.raises(SystemExit) as stop:
        train.main(quick(tmp_path, "--val_dataset", "Val", dataset_root=tmp_path / "data"))
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message and re.search(pattern, message), message
    log = tmp_path / "log/train.txt"  # a missing folder stops at the argument checks, before the log is opened
    assert not (tmp_path / "ckpt").exists() and (not log.exists() or "training on" not in log.read_text())


def test_image_unreadable_during_training_is_reported_and_skipped(data, quick, tmp_path, monkeypatch):
    shutil.copytree(data / "LaPa-Face", tmp_path / "data/LaPa-Face")
    broken = sorted((tmp_path / "data/LaPa-Face/underexposed").iterdir())[0]
    broken.write_bytes(b"")
    monkeypatch.setattr(TrainSet, "unreadable", lambda self, *share: [])  # it broke after the check before training
    train.main(quick(tmp_path, "--epoch_num", "1", "--num_workers", "1", dataset_root=tmp_path / "data"))
    log = (tmp_path / "log/train.txt").read_text()
    assert re.search(rf"^skipped {re.escape(str(broken))}: cannot read image \(empty file\); the next readable "
                     r"training item stands in$", log, re.M), log
    assert len(re.findall(r"^epoch 0 iter", log, re.M)) == 3 and (tmp_path / "ckpt/epoch0.pth").exists()
    identities = [identity_of(path.name) for path in sorted(broken.parent.iterdir())]
    data_set = TrainSet(str(tmp_path / "data/LaPa-Face"), identities, 64, str(data / "Contrast/high"),
                        str(data / "Contrast/low"))
    reported = []
    data_set.report = reported.append
    substitute, next_item = data_set[0], data_set[1]  # the next item stands in, contrastive samples included
    assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(substitute, next_item))
    assert len(reported) == 1 and str(broken) in reported[0]


def test_progress_bar_only_on_a_terminal_of_the_main_process(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    for stdout, main, shown in [(Terminal(), True, True), (io.StringIO(), True, False), (Terminal(), False, False)]:
        monkeypatch.setattr(sys, "stdout", stdout)
        bar = progress(8, 2, epoch=3, main=main)
        time.sleep(0.2)  # longer than tqdm's shortest interval between redraws
        bar.update(2)
        bar.close()
        text = stdout.getvalue()
        assert (re.search(r"epoch 3: .*4/8 \[.*<.*img/s\]", text) is not None) == shown, text


def test_training_data_gone_during_training_stops_in_one_line(data, quick, tmp_path, monkeypatch):
    shutil.copytree(data / "LaPa-Face", tmp_path / "data/LaPa-Face")
    for path in (tmp_path / "data/LaPa-Face/underexposed").iterdir():
        path.write_bytes(b"")
    monkeypatch.setattr(TrainSet, "unreadable", lambda self, *share: [])  # they broke after the check before training
    with pytest.raises(SystemExit) as stop:
        train.main(quick(tmp_path, "--epoch_num", "1", "--num_workers", "1", dataset_root=tmp_path / "data"))
    message = str(stop.value.code)
    assert re.fullmatch(r"error: \S+/LaPa-Face/underexposed: no training item can be read any more", message), message
    log = (tmp_path / "log/train.txt").read_text()
    skipped = re.findall(r"^skipped .*/(\S+): cannot read image \(empty file\)", log, re.M)  # each file, once or more
    assert set(skipped) == {path.name for path in (tmp_path / "data/LaPa-Face/underexposed").iterdir()}


def test_validation_image_unreadable_later_is_reported_and_left_out(data, quick, tmp_path, monkeypatch):
    shutil.copytree(data / "LaPa-Face", tmp_path / "data/LaPa-Face")
    shutil.copytree(data / VAL, tmp_path / "data" / VAL)
    broken = sorted((tmp_path / "data" / VAL / "normal").iterdir())[1]
    broken.write_bytes(b"")
    monkeypatch.setattr(Validation, "problems", lambda self: [])  # it broke after the check before training
    train.main(quick(tmp_path, "--epoch_num", "1", "--val_dataset", VAL, dataset_root=tmp_path / "data"))
    log = (tmp_path / "log/train.txt").read_text()
    assert re.search(rf"^validation skipped {re.escape(str(broken))}: cannot read image \(empty file\)$", log, re.M)
    assert re.search(r"^validation epoch 0 on LaPa-Test \(2 images\): ", log, re.M)
    assert read_image(tmp_path / "log/previews/epoch0.png").shape == (2 * SIZE + 4, 3 * SIZE + 2 * 4, 3)
