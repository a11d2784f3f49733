"""Messy folders and long runs: bad input files in test.py and eval.py, resumable test.py that never touches its
inputs, training killed by real signals and resumed to the same weights, NaN stops, one-line set-up errors,
atomic writes, and untrusted checkpoint and cache files that are refused without running their code."""
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import eval as evaluate
import nets
import nets.losses as losses
import test as test_script
import train
import utils.face_database as face_database
from conftest import ROOT, copy_faces
from nets.enhance import EnhanceNet, init_weights
from nets.retinaface import load_retinaface
from nets.facenet import load_facenet
from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint
from utils.images import read_image, to_tensor, to_uint8
from utils.lowlight import main as lowlight_main


# ---------------------------------------------------------------- a folder gathered from many sources

LONG = "n" * 246 + ".png"  # 250 bytes: a temporary name built from it would pass the 255-byte limit
RAW = os.fsdecode(b"raw \xff\xfe name.png")  # not valid UTF-8, as file systems allow
RAW_BAD = os.fsdecode(b"bad \xff.jpg")


def shown(path):
    """A path as the scripts print it: bytes that are not UTF-8 as backslash escapes."""
    return str(path).encode("utf-8", "backslashreplace").decode()


def messy_folder(root):
    """Writes every kind of entry a real folder holds. Returns (good: relative path -> (H, W) read upright,
    bad: unreadable image file -> the start of its reason, passed: other entry -> the reason it is passed over)."""
    rng = np.random.default_rng(0)
    rgb = lambda h, w: rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    good = {"grey.png": (20, 24), "rgba.png": (20, 24), "palette.png": (20, 24), "deep16.png": (20, 24),
            "cmyk.jpg": (20, 24), "rotated.jpg": (30, 20), "one.png": (1, 1), "seven_by_three.png": (3, 7),
            "odd.bmp": (17, 33), "a/b/nested.tif": (9, 11), "sub dir/ünïcode naïve 名前.png": (12, 10),
            "dark16.pgm": (5, 7), "wide.png": (2, 2000), LONG: (3, 4), RAW: (6, 5), "linked/x.png": (8, 9)}
    elsewhere = root.parent / f"{root.name} elsewhere"  # a folder reached through a link
    elsewhere.mkdir(parents=True)
    root.mkdir()
    os.symlink(elsewhere, root / "linked")
    for rel in good:
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    Image.fromarray(rgb(20, 24)[..., 0]).save(root / "grey.png")
    Image.fromarray(np.dstack([rgb(20, 24), rng.integers(0, 256, (20, 24), dtype=np.uint8)])).save(root / "rgba.png")
    Image.fromarray(rgb(20, 24)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    Image.fromarray(rng.integers(0, 40000, (20, 24), dtype=np.uint16)).save(root / "deep16.png")
    Image.fromarray(rgb(20, 24)).convert("CMYK").save(root / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30 wide x 20 high, shown rotated by 90 degrees
    Image.fromarray(rgb(20, 30)).save(root / "rotated.jpg", exif=exif)
    (root / "dark16.pgm").write_bytes(b"P5\n7 5\n65535\n" + rng.integers(0, 219, (5, 7)).astype(">u2").tobytes())
    for rel, (h, w) in [("one.png", (1, 1)), ("seven_by_three.png", (3, 7)), ("odd.bmp", (17, 33)),
                        ("a/b/nested.tif", (9, 11)), ("sub dir/ünïcode naïve 名前.png", (12, 10)),
                        ("wide.png", (2, 2000)), (LONG, (3, 4)), (RAW, (6, 5)), ("linked/x.png", (8, 9))]:
        Image.fromarray(rgb(h, w)).save(root / rel)
    Image.fromarray(rgb(64, 64)).save(root / "whole.jpg")
    jpeg = (root / "whole.jpg").read_bytes()
    (root / "whole.jpg").unlink()
    bad = {"empty.jpg": "cannot read image (empty file)", "truncated.jpg": "cannot read image (",
           "a/text.jpg": "cannot read image (", RAW_BAD: "cannot read image (", "gone.jpg": "cannot read image (",
           "nan.tif": "pixel values outside 0..255", "negative.tif": "pixel values outside 0..4294967295"}
    passed = {".DS_Store": "hidden file", "Thumbs.db": "not an image file", "a/notes.txt": "not an image file",
              ".cache": "hidden folder", "pipe.png": "not a regular file",
              "a/loop": "a link to a folder above it (not followed: it would loop)"}
    for rel, data in {"empty.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) // 2], "a/text.jpg": b"just some text\n",
                      RAW_BAD: b"text", ".DS_Store": b"\0\0\0\1Bud1", "Thumbs.db": b"\xd0\xcf\x11\xe0",
                      "a/notes.txt": b"notes\n"}.items():
        (root / rel).write_bytes(data)
    os.symlink(root / "nowhere.jpg", root / "gone.jpg")  # a broken link
    Image.fromarray(np.array([[0.5, np.nan]], np.float32)).save(root / "nan.tif")
    Image.fromarray(np.array([[7, -5]], np.int32)).save(root / "negative.tif")
    (root / ".cache").mkdir()
    Image.fromarray(rgb(4, 4)).save(root / ".cache" / "thumb.png")
    os.mkfifo(root / "pipe.png")  # opening it would wait for a writer forever
    os.symlink(root, root / "a" / "loop")
    (root / "empty folder").mkdir()
    return good, bad, passed


def all_files(root):
    """{relative path: bytes} of every file below root, hidden ones included."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_named(lines, root, bad, passed):
    """Each unreadable image and each entry passed over is named in exactly one line, with its reason."""
    for rel, reason in bad.items():
        named = [line for line in lines if shown(root / rel) + ":" in line]
        assert len(named) == 1 and named[0].startswith(f"failed {shown(root / rel)}: {reason}"), (rel, named)
    for rel, reason in passed.items():
        named = [line for line in lines if shown(root / rel) + ":" in line]
        assert named == [f"skipped {shown(root / rel)}: {reason}"], (rel, named)


@pytest.fixture
def enhancer(tmp_path):
    torch.manual_seed(0)
    model = init_weights(EnhanceNet()).eval()
    torch.save(model.state_dict(), tmp_path / "epoch0.pth")
    return model, tmp_path / "epoch0.pth"


def run_test_py(src, dst, checkpoint, capsys, *extra):
    """(exit status, printed lines) of test.py."""
    code = test_script.main(["--underexposed_path", str(src), "--enhanced_path", str(dst), "--enhance_checkpoint",
                             str(checkpoint), "--device", "cpu", "--num_workers", "0", "--batch_size", "3", *extra])
    return code, capsys.readouterr().out.splitlines()


def test_test_py_enhances_every_readable_image_and_names_the_rest(tmp_path, enhancer, capsys):
    model, checkpoint = enhancer
    src, dst = tmp_path / "in", tmp_path / "out"
    good, bad, passed = messy_folder(src)
    code, lines = run_test_py(src, dst, checkpoint, capsys)
    assert code == 1
    assert_named(lines, src, bad, passed)
    assert lines[-1] == (f"done: {len(good)} written, 0 kept, {len(bad)} failed, {len(passed)} other entries passed "
                         f"over; {len(bad)} of the {len(good) + len(bad)} files asked for are missing")

    assert set(all_files(dst)) == set(good)  # every good image, nothing else (no temporary files)
    (tmp_path / "plain").write_bytes(b"")
    assert (dst / "one.png").stat().st_mode == (tmp_path / "plain").stat().st_mode  # not the temporary file's 0600
    for rel, size in good.items():
        out = read_image(str(dst / rel))
        assert out.shape == (*size, 3), rel  # upright, whole, any size
        if not rel.endswith(".jpg"):  # lossless formats: exactly the network's output
            with torch.no_grad():
                expected = to_uint8(model(to_tensor(read_image(str(src / rel)))[None])[0][0])
            np.testing.assert_array_equal(out, expected, err_msg=rel)


def test_test_py_keeps_inputs_and_existing_outputs_and_resumes(tmp_path, enhancer, capsys):
    _, checkpoint = enhancer
    src, dst = tmp_path / "in", tmp_path / "out"
    good, bad, passed = messy_folder(src)
    inputs = all_files(src)
    assert run_test_py(src, dst, checkpoint, capsys)[0] == 1
    first = all_files(dst)
    done = lambda written, kept: (f"done: {written} written, {kept} kept, {len(bad)} failed, {len(passed)} other "
                                  f"entries passed over; {len(bad)} of the {len(good) + len(bad)} files asked for "
                                  "are missing")

    # an interrupted run: some outputs missing, one from an older run; the same command finishes the job
    (dst / "odd.bmp").unlink()
    (dst / "sub dir/ünïcode naïve 名前.png").unlink()
    (dst / "one.png").write_bytes(b"from an older run")
    code, lines = run_test_py(src, dst, checkpoint, capsys)
    assert code == 1 and lines[-1] == done(2, len(good) - 2)
    assert any(f"({len(good) - 2} already there, kept; --overwrite replaces them)" in line for line in lines)
    assert all_files(dst) == {**first, "one.png": b"from an older run"}

    code, lines = run_test_py(src, dst, checkpoint, capsys, "--overwrite")
    assert lines[-1] == done(len(good), 0)
    assert all_files(dst) == first
    assert all_files(src) == inputs  # inputs never changed, moved or deleted


def test_test_py_empty_folder_and_misplaced_output(tmp_path, enhancer, capsys):
    _, checkpoint = enhancer
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"^error: no images found in .*empty$"):
        run_test_py(tmp_path / "empty", tmp_path / "out", checkpoint, capsys)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "Thumbs.db").write_bytes(b"x")
    with pytest.raises(SystemExit, match="no images found"):
        run_test_py(tmp_path / "junk", tmp_path / "out", checkpoint, capsys)
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="junk/out lies inside --underexposed_path"):
        run_test_py(tmp_path / "junk", tmp_path / "junk" / "out", checkpoint, capsys)
    assert not (tmp_path / "out").exists()


def test_eval_iqa_scores_every_readable_image_and_names_the_rest(tmp_path, capsys):
    data = tmp_path / "dataset" / "CelebA-Test"
    images = data / "SOTAs" / "Ours"
    good, bad, passed = messy_folder(images)
    for rel in good:  # every readable image is its own reference
        (data / "normal" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / rel, data / "normal" / rel)
    argv = ["--dataset_name", "CelebA-Test", "--dataset_root", str(tmp_path / "dataset"), "--num_workers", "0",
            "--log_path", str(tmp_path / "eval.txt"), "--unique_checkpoint", str(tmp_path / "absent.pt"),
            "--device", "cpu"]
    assert evaluate.main(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    assert_named(lines, images, bad, passed)
    n, files = len(good), len(good) + len(bad)
    assert f"PSNR 100.0000 over {n} of {files} images; {len(bad)} left out (named above); {n} at the 100 dB cap " \
           "(identical to their reference)" in lines
    assert f"psnr=100.0000 psnr_images={n} psnr_capped={n} ssim=1.0000 ssim_images={n} images={files} " \
           f"failed={len(bad)}" in (tmp_path / "eval.txt").read_text()

    shutil.rmtree(images)
    (images / "empty folder").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no image files"):
        evaluate.main(argv)


def test_lowlight_synthesis_of_a_messy_folder(tmp_path, capsys):
    src, dst = tmp_path / "normal", tmp_path / "underexposed"
    good, bad, passed = messy_folder(src)
    assert lowlight_main(["--normal_path", str(src), "--underexposed_path", str(dst)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert_named(lines, src, bad, passed)
    assert lines[-1] == f"done: {len(good)} written to {dst}, 0 kept (--overwrite replaces them), {len(bad)} failed"
    assert {rel: read_image(str(dst / rel)).shape[:2] for rel in all_files(dst)} == good
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SystemExit, match="no images found in"):
        lowlight_main(["--normal_path", str(tmp_path / "nothing"), "--underexposed_path", str(dst)])


def test_eval_recognition_with_tiny_odd_and_broken_images(tmp_path, lfw_faces, retinaface_weights, facenet_file,
                                                          capsys):
    data = tmp_path / "dataset" / "CASIA-Test"
    name = sorted(p.name for p in lfw_faces.iterdir())[0]
    copy_faces(lfw_faces, data / "normal", [name], 1)
    method = data / "SOTAs" / "Ours" / name
    method.mkdir(parents=True)
    shutil.copyfile(next((data / "normal" / name).iterdir()), method / f"{name}_0001.jpg")
    Image.new("RGB", (1, 1)).save(method / f"{name}_0002.png")
    Image.new("L", (7, 3)).save(method / f"{name}_0003.png")
    Image.new("CMYK", (33, 17)).save(method / f"{name}_0004.jpg")
    (method / f"{name}_0005.jpg").write_bytes(b"")
    Image.new("RGB", (2000, 2)).save(method / f"{name}_0006.png")  # letterboxed to 640x0 by the published rule
    Image.new("RGB", (2, 2000)).save(method / f"{name}_0007.png")
    (method / "Thumbs.db").write_bytes(b"x")
    argv = ["--dataset_root", str(tmp_path / "dataset"), "--database_root", str(tmp_path / "database"),
            "--encoding_root", str(tmp_path / "encoding"), "--log_path", str(tmp_path / "eval.txt"),
            "--retinaface_checkpoint", str(retinaface_weights), "--facenet_checkpoint", str(facenet_file),
            "--unique_checkpoint", str(tmp_path / "absent.pt"), "--device", "cpu", "--num_workers", "0"]
    assert evaluate.main(argv) == 1
    out = capsys.readouterr().out
    assert f"failed {method / f'{name}_0005.jpg'}: cannot read image (empty file)" in out
    assert f"skipped {method / 'Thumbs.db'}: not an image file" in out
    assert "top-1 accuracy 16.67% (1/6 images, 1 unreadable left out (named above), 1 identities" in out
    assert "top1=16.6667 correct=1 top1_images=6 no_face=5 compat=0 images=7 failed=1" in \
        (tmp_path / "eval.txt").read_text()


# ---------------------------------------------------------------- training: signals, kills, NaN, set-up errors

QUICK = ("--crop_size", "64", "--batch_size", "1", "--epoch_num", "1", "--save_every", "1", "--log_every", "1",
         "--deterministic")  # 6 iterations of one image, a resume point after each


def _resume_point(path):
    """(epoch, batch) of a resume.pth, or None while there is none."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["epoch"], state["batch"]


def test_training_killed_mid_epoch_resumes_to_the_same_weights(train_args, tmp_path):
    train.main(train_args(*QUICK, ckpt="straight"))
    expected = torch.load(tmp_path / "straight" / "epoch0.pth", weights_only=True)

    # SIGTERM (what a scheduler sends) stops at the next iteration boundary with a resume point;
    # SIGKILL gives no warning: the last periodic resume point must be whole and lead to the same weights.
    for sig, after_batch in ((signal.SIGTERM, 1), (signal.SIGKILL, 2)):
        ckpt, output = tmp_path / sig.name, tmp_path / f"{sig.name}.txt"
        with open(output, "w") as out:
            proc = subprocess.Popen([sys.executable, "train.py", *train_args(*QUICK, ckpt=sig.name)], cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while (_resume_point(ckpt / "resume.pth") or (0, 0))[1] < after_batch:
            assert proc.poll() is None and time.time() < deadline, output.read_text()[-3000:]
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.wait(timeout=300)
        epoch, batch = _resume_point(ckpt / "resume.pth")
        assert epoch == 0 and after_batch <= batch < 6, (sig.name, batch)  # stopped mid-epoch
        assert not (ckpt / "epoch0.pth").exists()
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, output.read_text()[-3000:]
            assert f"stopped at epoch 0 iteration {batch}; continue with --resume" in output.read_text()
        else:
            assert proc.returncode == -signal.SIGKILL

        train.main(train_args(*QUICK, "--resume", ckpt=sig.name))
        resumed = torch.load(ckpt / "epoch0.pth", weights_only=True)
        for k, v in expected.items():
            torch.testing.assert_close(resumed[k], v, rtol=0, atol=1e-6, msg=f"{sig.name}: {k}")


def test_sigterm_to_every_process_of_the_job_with_loader_workers_saves_and_stops(train_args, tmp_path):
    output = tmp_path / "group.txt"
    with open(output, "w") as out:  # a session of its own: the signal goes to train.py and its worker
        proc = subprocess.Popen([sys.executable, "train.py", *train_args(*QUICK, "--num_workers", "1", ckpt="group")],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while (_resume_point(tmp_path / "group" / "resume.pth") or (0, 0))[1] < 1:
        assert proc.poll() is None and time.time() < deadline, output.read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, output.read_text()[-3000:]
    epoch, batch = _resume_point(tmp_path / "group" / "resume.pth")
    assert f"stopped at epoch 0 iteration {batch}; continue with --resume" in output.read_text()


def test_atomic_save_killed_while_writing_leaves_old_or_new_file(tmp_path):
    target = tmp_path / "state.pth"
    writer = ("import itertools, torch\nfrom utils.checkpoint import atomic_save\nfor i in itertools.count():\n"
              f"    atomic_save({{'i': torch.full((1 << 21,), float(i))}}, {str(target)!r})\n")
    for delay in (0.0, 0.03, 0.07):
        proc = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT)
        deadline = time.time() + 120
        while not target.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        values = read_checkpoint(target)["i"]
        assert values.shape == (1 << 21,) and bool((values == values[0]).all())
        assert all(p.name.startswith(".tmp-") for p in tmp_path.iterdir() if p != target)  # leftovers stay hidden


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nan_stops_training_naming_the_term(train_args, tmp_path, monkeypatch, where):
    real, calls = losses.smooth_loss, []

    def poisoned(input, illumination):  # the second iteration goes wrong
        calls.append(1)
        value = real(input, illumination)
        if len(calls) < 2:
            return value
        if where == "loss":
            return value * float("nan")
        # finite value, NaN gradient: sqrt of a negative number in the branch where() does not take
        return value + torch.where(illumination > 5, (illumination - 5).sqrt(), torch.zeros_like(illumination)).sum()
    monkeypatch.setattr(losses, "smooth_loss", poisoned)

    with pytest.raises(SystemExit) as stop:
        train.main(train_args("--crop_size", "64", "--epoch_num", "1", "--save_every", "1"))
    message = str(stop.value.code)
    expected = {"loss": "loss term smooth became nan", "gradient": "the gradient norm became nan"}[where]
    assert message.startswith(f"error: {expected} at epoch 0 iteration 2") and "\n" not in message
    assert message.endswith(f"(last resume point: {tmp_path / 'ckpt' / 'resume.pth'})")
    assert message in (tmp_path / "log/train.txt").read_text()
    assert not (tmp_path / "ckpt" / "epoch0.pth").exists()
    state = torch.load(tmp_path / "ckpt" / "resume.pth", weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 1)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _no_identity(data, tmp_path):
    shutil.copyfile(data / "underexposed" / "Bill_Clinton_0001.jpg", data / "underexposed" / "Nobody_0001.jpg")
    shutil.copyfile(data / "seg" / "Bill_Clinton_0001.png", data / "seg" / "Nobody_0001.png")
    return []


def _no_face(data, tmp_path):
    for path in (data / "normal").iterdir():
        Image.new("RGB", (120, 120), (128, 128, 128)).save(path, format="JPEG")
    return []


def _empty(data, tmp_path):
    for sub in ("underexposed", "normal", "seg"):
        shutil.rmtree(data / sub)
        (data / sub).mkdir()
    return []


def _corrupt(data, tmp_path):
    (data / "underexposed" / "Bill_Clinton_0002.jpg").write_bytes(b"")
    (data / "seg" / "Angelina_Jolie_0001.png").unlink()
    return []


def _resume_from(written, tmp_path):
    atomic_save(written, tmp_path / "resume.pth")
    return ["--resume", "--resume_checkpoint", str(tmp_path / "resume.pth")]


SETUP_ERRORS = {  # case: (changes to dataset/LaPa-Face and extra arguments, the error line)
    "missing data folder": (lambda data, t: ["--dataset_name", "Nowhere"], r"Nowhere/underexposed: folder not found"),
    "empty data folder": (_empty, r"LaPa-Face/normal: no images to build the face database from"),
    "identity absent from the database": (
        _no_identity, r"identity 'Nobody' of .*LaPa-Face/underexposed is not in the face database"),
    "database without a face": (_no_face, r"database/LaPa-Face: no face found in any database image"),
    "unreadable training files": (_corrupt, r"2 training files cannot be read \(listed above\)"),
    "enhancer weights as FaceNet": (lambda data, t: ["--facenet_checkpoint", str(t / "epoch0.pth")],
                                    r"epoch0.pth: expected a bare state dict of FaceNet; \d+ missing keys"),
    "FaceNet weights to resume": (
        lambda data, t: ["--resume", "--resume_checkpoint", str(t / "facenet_mobilenet.pth")],
        r"cannot resume: .*facenet_mobilenet.pth: expected a bare state dict of EnhanceNet"),
    "resume point of other settings": (
        lambda data, t: _resume_from({"optimizer": {}, "images": 6, "world": 1, "args": {"batch_size": 3, "seed": 1}}, t),
        r"resume.pth: written for \(images, batch_size, seed, processes\) = \(6, 3, 1, 1\), this run has \(6, 2, 1, 1\)"),
}


@pytest.fixture(scope="module")
def shared_encodings(tmp_path_factory):
    """An encoding cache for all cases: it is rebuilt only where a case changes the database images."""
    return tmp_path_factory.mktemp("encoding")


@pytest.mark.parametrize("case", SETUP_ERRORS)
def test_training_setup_errors_end_in_one_line(case, train_args, tiny_dataset, tmp_path, enhancer, facenet_file,
                                               shared_encodings):
    shutil.copyfile(facenet_file, tmp_path / "facenet_mobilenet.pth")
    shutil.copytree(tiny_dataset / "LaPa-Face", tmp_path / "data" / "LaPa-Face")
    change, pattern = SETUP_ERRORS[case]
    with pytest.raises(SystemExit) as stop:
        train.main(train_args("--dataset_root", str(tmp_path / "data"), "--encoding_root", str(shared_encodings),
                              *change(tmp_path / "data/LaPa-Face", tmp_path)))
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message and len(message) < 400, message
    assert re.search(pattern, message), message
    assert not (tmp_path / "ckpt").exists()


def test_test_py_wrong_checkpoint_is_one_line(tmp_path, facenet_file):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    with pytest.raises(SystemExit) as stop:
        test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                          "--enhance_checkpoint", str(facenet_file), "--device", "cpu"])
    message = str(stop.value.code)
    assert message.startswith(f"error: {facenet_file}: expected a bare state dict of EnhanceNet")
    assert "\n" not in message


# ---------------------------------------------------------------- untrusted files

class Bomb:
    """Unpickling it creates the file `marker`: code that loading a weights file must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickle_bomb_checkpoint_is_refused_without_running_it(tmp_path):
    marker, bomb = tmp_path / "exploded", tmp_path / "Low-FaceNet.pth"
    torch.save({"e_conv1.weight": Bomb(marker)}, bomb)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")

    with pytest.raises(CheckpointError, match="Low-FaceNet.pth: not a readable weights-only PyTorch checkpoint"):
        read_checkpoint(bomb)
    with pytest.raises(CheckpointError, match="not a readable weights-only"):
        nets.load("enhance", bomb)
    with pytest.raises(SystemExit, match="not a readable weights-only"):
        test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                          "--enhance_checkpoint", str(bomb), "--device", "cpu"])
    assert not marker.exists()

    torch.load(bomb, weights_only=False)["e_conv1.weight"].close()  # the bomb is real: a full unpickling runs it
    assert marker.exists()


def test_pickled_encoding_cache_is_refused_and_rebuilt(tmp_path, lfw_faces, retinaface_weights, facenet_file):
    ids = sorted(p.name for p in lfw_faces.iterdir())[:2]
    normal, encoding, marker = tmp_path / "normal", tmp_path / "encoding", tmp_path / "exploded"
    copy_faces(lfw_faces, normal, ids, 1, flat=True)
    face_database.build_database(normal, tmp_path / "database")
    detector, facenet = load_retinaface(retinaface_weights), load_facenet(facenet_file)
    encoding.mkdir()
    np.save(encoding / "S_encoding.npy", np.array([Bomb(marker)], dtype=object), allow_pickle=True)
    np.save(encoding / "S_name.npy", np.array([ids[0]], dtype=object), allow_pickle=True)
    files = {kind: hashlib.sha256((encoding / f"S_{kind}.npy").read_bytes()).hexdigest() for kind in ("encoding", "name")}
    (encoding / "S_fingerprint.json").write_text(json.dumps({**face_database.fingerprint(normal, detector, facenet),
                                                             "files": files}))  # a fingerprint that fits them

    encodings, names = face_database.load_encodings(normal, tmp_path / "database", encoding, "S", detector, facenet,
                                                    "cpu")
    assert not marker.exists()
    assert names == ids and encodings.shape == (2, 128)
    assert np.load(encoding / "S_encoding.npy", allow_pickle=False).shape == (2, 128)  # rebuilt, plain numbers


def test_every_load_of_the_project_is_weights_only():
    """torch.load(..., weights_only=True) and np.load(..., allow_pickle=False) everywhere outside tests/."""
    calls = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if "tests" in parts or any(part.startswith(".") for part in parts):  # .venv, .git, ...
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "np", "numpy"):
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                safe = flags.get("weights_only") is True if node.func.value.id == "torch" else \
                    flags.get("allow_pickle") is False
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls and all(safe for _, safe in calls), [where for where, safe in calls if not safe]
