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
import utils.lowlight as lowlight
from conftest import IDENTITIES, ROOT, copy_faces
from nets.enhance import EnhanceNet, init_weights
from nets.face_recognition import align_face_numpy
from nets.retinaface import load_retinaface
from nets.facenet import load_facenet
from nets.vgg import load_vgg16
from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint
from utils.checks import escape_unprintable_names
from utils.images import ImageReadError, read_image, to_tensor, to_uint8
from utils.lowlight import main as lowlight_main
from utils.output_record import RECORD_NAME


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
    """{relative path: bytes} of every file below root, hidden ones included, but for the record of what made an
    output folder (utils.output_record, tested in tests/test_outputs_and_images.py)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != RECORD_NAME}


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


def test_eval_recognition_with_tiny_odd_and_broken_images(tmp_path, face_photos, retinaface_weights, facenet_file,
                                                          capsys):
    data = tmp_path / "dataset" / "CASIA-Test"
    name = IDENTITIES[0]
    copy_faces(face_photos, data / "normal", [name], 1)
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


# ---------------------------------------------------------------- outputs never land on inputs

def _folders_of_every_script(tmp):
    """Inputs of each script under tmp: in/ (and its sibling normal/), dataset/CASIA-Test, dataset/LaPa-Face."""
    for folder in ("in", "normal", "dataset/CASIA-Test/normal", "dataset/CASIA-Test/SOTAs/Ours",
                   "dataset/CASIA-Test/SOTAs/CASIA-Test",
                   "dataset/LaPa-Face/underexposed", "dataset/LaPa-Face/normal", "dataset/LaPa-Face/seg",
                   "dataset/Contrast/high", "dataset/Contrast/low"):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp / folder / "a.png")


def _test_py(t, *extra):
    return test_script.main(["--underexposed_path", str(t / "in"), "--enhance_checkpoint", str(t / "none.pth"),
                             "--device", "cpu", *extra])


def _lowlight(t, dst):
    return lowlight_main(["--normal_path", str(t / "in"), "--underexposed_path", str(dst), "--overwrite"])


def _eval(t, *extra):
    return evaluate.main(["--dataset_root", str(t / "dataset"), "--log_path", str(t / "log.txt"), *extra])


def _train(t, *extra):
    return train.main(["--dataset_root", str(t / "dataset"), "--contrast_positive_path",
                       str(t / "dataset/Contrast/high"), "--contrast_negative_path", str(t / "dataset/Contrast/low"),
                       "--log_path", str(t / "log.txt"),
                       "--database_root", str(t / "database"), "--encoding_root", str(t / "encoding"), *extra])


OUTPUT_ON_INPUT = {  # case: (run the script under tmp, the line it stops with)
    "comparison folder is the input": (lambda t: _test_py(t, "--enhanced_path", str(t / "out"), "--comparison_path",
                                                          str(t / "in")),
                                       r"--comparison_path \S+/in is --underexposed_path"),
    "comparison folder inside the input": (lambda t: _test_py(t, "--enhanced_path", str(t / "out"),
                                                              "--comparison_path", str(t / "in/cmp")),
                                           r"in/cmp lies inside --underexposed_path"),
    "comparison folder is the normal folder": (lambda t: _test_py(t, "--enhanced_path", str(t / "out"),
                                                                  "--comparison_path", str(t / "normal")),
                                               r"--comparison_path \S+/normal is the normal-light folder"),
    "output folder holds the input": (lambda t: _test_py(t, "--enhanced_path", str(t)),
                                      r"--enhanced_path \S+ contains --underexposed_path"),
    "two outputs in one folder": (lambda t: _test_py(t, "--enhanced_path", str(t / "out"), "--comparison_path",
                                                     str(t / "out")), r"--enhanced_path \S+/out is --comparison_path"),
    "low-light output is its input": (lambda t: _lowlight(t, t / "in"), r"--underexposed_path \S+/in is --normal_path"),
    "low-light output inside its input": (lambda t: _lowlight(t, t / "in" / "dark"),
                                          r"in/dark lies inside --normal_path"),
    "low-light input inside its output": (lambda t: _lowlight(t, t), r"contains --normal_path"),
    "eval encodings in the normal folder": (lambda t: _eval(t, "--encoding_root", str(t / "dataset/CASIA-Test/normal")),
                                            r"--encoding_root \S+/normal is the normal-light images"),
    "eval database is the method's folder": (
        lambda t: _eval(t, "--method_name", "CASIA-Test", "--database_root", str(t / "dataset/CASIA-Test/SOTAs")),
        r"the face database folder \(--database_root\) \S+ is the enhanced images of --method_name"),
    "training checkpoints inside the data": (
        lambda t: _train(t, "--checkpoint_root", str(t / "dataset/LaPa-Face/seg/ckpt")),
        r"--checkpoint_root \S+ lies inside the training set's seg"),
    "training database inside the encodings": (lambda t: _train(t, "--encoding_root", str(t)),
                                               r"the face database folder \(--database_root\) \S+ lies inside "
                                               r"--encoding_root"),
}


@pytest.mark.parametrize("case", OUTPUT_ON_INPUT)
def test_a_folder_written_is_refused_where_it_meets_one_read_or_written(case, tmp_path):
    _folders_of_every_script(tmp_path)
    before = all_files(tmp_path)
    run, pattern = OUTPUT_ON_INPUT[case]
    with pytest.raises(SystemExit) as stop:
        run(tmp_path)
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message and re.search(pattern, message), message
    assert all_files(tmp_path) == before  # nothing written, nothing replaced
    assert not any(p.is_dir() and not any(p.iterdir()) for p in tmp_path.rglob("*"))  # no folder created either


def test_inputs_that_would_make_one_comparison_picture_get_a_line_each(tmp_path, enhancer, capsys):
    _, checkpoint = enhancer
    for rel in ("a.jpg", "a.png", "sub/b.png", "sub/b.bmp", "c.png"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (40, 50, 60)).save(tmp_path / "in" / rel)
    code, lines = run_test_py(tmp_path / "in", tmp_path / "out", checkpoint, capsys, "--comparison_path",
                              str(tmp_path / "cmp"))
    assert code == 1
    for rel, other in (("a.jpg", "a.png"), ("a.png", "a.jpg"), ("sub/b.png", "sub/b.bmp"), ("sub/b.bmp", "sub/b.png")):
        picture = tmp_path / "cmp" / (os.path.splitext(rel)[0] + ".png")
        assert f"failed {picture}: not written: it would be the comparison picture of {tmp_path / 'in' / rel} " \
               f"and of {tmp_path / 'in' / other}" in lines
    assert sorted(all_files(tmp_path / "out")) == ["a.jpg", "a.png", "c.png", "sub/b.bmp", "sub/b.png"]
    assert sorted(all_files(tmp_path / "cmp")) == ["c.png"]
    assert lines[-1].endswith("4 failed, 0 other entries passed over; 4 of the 10 files asked for are missing")


# ---------------------------------------------------------------- every output asked for, or a line naming it

def test_a_rerun_writes_every_output_still_missing(tmp_path, enhancer, capsys):
    _, checkpoint = enhancer
    for folder in ("in", "normal"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png"):
            Image.new("RGB", (8, 6), (40, 50, 60)).save(tmp_path / folder / name)
    src, dst, cmp = tmp_path / "in", tmp_path / "out", ["--comparison_path", str(tmp_path / "cmp")]
    assert run_test_py(src, dst, checkpoint, capsys)[0] == 0
    enhanced = all_files(dst)

    # comparison pictures asked for after a complete run: written, the enhanced images kept
    code, lines = run_test_py(src, dst, checkpoint, capsys, *cmp)
    assert code == 0 and lines[-1] == "done: 2 written, 0 kept, 0 failed, 0 other entries passed over"
    assert sorted(all_files(tmp_path / "cmp")) == ["a.png", "b.png"] and all_files(dst) == enhanced

    # a picture that fails (its normal-light image cannot be read) is named, counted missing, and retried later
    (tmp_path / "cmp" / "b.png").unlink()
    (tmp_path / "normal" / "b.png").write_bytes(b"")
    code, lines = run_test_py(src, dst, checkpoint, capsys, *cmp)
    assert code == 1
    assert f"failed {tmp_path / 'cmp/b.png'}: not written ({tmp_path / 'normal/b.png'}: cannot read image (empty " \
           "file))" in lines
    assert lines[-1] == "done: 0 written, 1 kept, 1 failed, 0 other entries passed over; 1 of the 4 files asked " \
                        "for are missing"
    Image.new("RGB", (8, 6)).save(tmp_path / "normal" / "b.png")
    code, lines = run_test_py(src, dst, checkpoint, capsys, *cmp)
    assert code == 0 and lines[-1] == "done: 1 written, 1 kept, 0 failed, 0 other entries passed over"
    assert read_image(str(tmp_path / "cmp" / "b.png")).shape == (6, 3 * 8 + 2 * 4, 3)  # input | enhanced | normal

    # an output that cannot be written (a folder stands at its name): named, and the run fails
    (dst / "a.png").unlink()
    (dst / "a.png").mkdir()
    code, lines = run_test_py(src, dst, checkpoint, capsys, *cmp)
    assert code == 1 and any(line.startswith(f"failed {dst / 'a.png'}: cannot write (") for line in lines)
    assert lines[-1].endswith("; 1 of the 4 files asked for are missing")


# ---------------------------------------------------------------- the face database: every input, whole files

@pytest.fixture
def encode_calls(monkeypatch):
    """Counts the images the face database sends to the encoder."""
    calls, real = [], face_database.encode_faces

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return real(images, *args, **kwargs)
    monkeypatch.setattr(face_database, "encode_faces", counting)
    return calls


def test_encodings_are_rebuilt_for_another_detector_settings_or_format(tmp_path, face_photos, retinaface_weights,
                                                                       facenet_file, encode_calls, monkeypatch):
    ids = IDENTITIES[:3]
    normal = tmp_path / "normal"
    copy_faces(face_photos, normal, ids, 1)
    facenet = load_facenet(facenet_file)
    load = lambda detector, enc="encoding": face_database.load_encodings(
        normal, tmp_path / "database", tmp_path / enc, "S", detector, facenet, "cpu")
    first, _ = load(load_retinaface(retinaface_weights))
    load(load_retinaface(retinaface_weights))
    assert encode_calls == [3]  # the same inputs: the cache

    weights = torch.load(retinaface_weights, map_location="cpu", weights_only=True)  # another detector
    weights["body.stage1.0.0.weight"] = weights["body.stage1.0.0.weight"] * 1.05
    torch.save(weights, tmp_path / "other_detector.pth")
    other = load_retinaface(tmp_path / "other_detector.pth")
    rebuilt, _ = load(other)
    assert len(encode_calls) == 2 and not torch.equal(rebuilt, first)
    assert torch.equal(rebuilt, load(other, "fresh")[0])  # exactly what a fresh build gives

    load(load_retinaface(retinaface_weights, confidence=0.9))  # another detection setting
    monkeypatch.setattr(face_database, "CACHE_FORMAT", face_database.CACHE_FORMAT + 1)  # another cache format
    load(load_retinaface(retinaface_weights, confidence=0.9))
    assert len(encode_calls) == 5


def test_two_builds_at_once_never_leave_a_cache_that_passes_for_one(tmp_path, face_photos, retinaface_weights,
                                                                    facenet_file, encode_calls, monkeypatch):
    ids = IDENTITIES[:2]
    copy_faces(face_photos, tmp_path / "normal", ids, 1)
    detector = load_retinaface(retinaface_weights)
    weights = torch.load(facenet_file, weights_only=True)
    weights["last_bn.bias"] = weights["last_bn.bias"] + 0.5
    torch.save(weights, tmp_path / "other_facenet.pth")
    ours, theirs = load_facenet(facenet_file), load_facenet(tmp_path / "other_facenet.pth")
    load = lambda net, enc="encoding": face_database.load_encodings(
        tmp_path / "normal", tmp_path / "database", tmp_path / enc, "S", detector, net, "cpu")

    # the other run does its whole build while ours is between writing its encodings and its names
    real, interleaved = face_database.atomic_write, []

    def interleaving(path, write):
        if str(path).endswith("S_name.npy") and not interleaved:
            interleaved.append(path)
            load(theirs)
        return real(path, write)
    monkeypatch.setattr(face_database, "atomic_write", interleaving)
    load(ours)
    monkeypatch.setattr(face_database, "atomic_write", real)
    assert interleaved and len(encode_calls) == 2
    # left behind: their encodings, our names and our fingerprint; the next run must not take them for a cache
    encodings, _ = load(ours)
    assert len(encode_calls) == 3
    assert torch.equal(encodings, load(ours, "fresh")[0])

    # a database copy cut short (a run killed while copying outside atomic writes) is not taken either
    copy = next((tmp_path / "database").rglob("*.jpg"))
    copy.write_bytes(copy.read_bytes()[:100])
    load(ours)
    assert len(encode_calls) == 5 and copy.read_bytes() == \
        face_database.resaved(next((tmp_path / "normal").rglob(copy.name)))


def test_face_database_names_what_it_passes_over_and_survives_odd_shapes(tmp_path, face_photos, retinaface_weights,
                                                                         facenet_file, capsys):
    ids = IDENTITIES[:2]
    normal = tmp_path / "normal"
    copy_faces(face_photos, tmp_path / "elsewhere", ids[1:], 1)
    copy_faces(face_photos, normal, ids[:1], 1)
    os.symlink(tmp_path / "elsewhere" / ids[1], normal / ids[1])  # an identity folder reached through a link
    for name, size in (("Wide", (2000, 2)), ("Tall", (2, 2000))):  # letterboxed to 640x0 by the published rule
        (normal / name).mkdir()
        Image.new("RGB", size, (90, 90, 90)).save(normal / name / f"{name}_0001.png")
    (normal / "Thumbs.db").write_bytes(b"x")
    (normal / ".thumbnails").mkdir()
    os.mkfifo(normal / "pipe.jpg")
    (normal / RAW_BAD).write_bytes(b"text")
    escape_unprintable_names()  # as eval.py and train.py do
    encodings, names = face_database.load_encodings(normal, tmp_path / "database", tmp_path / "encoding", "S",
                                                    load_retinaface(retinaface_weights), load_facenet(facenet_file),
                                                    "cpu")
    assert names == ids and encodings.shape == (2, 128)
    lines = capsys.readouterr().out.splitlines()
    for rel, reason in (("Thumbs.db", "not an image file"), (".thumbnails", "hidden folder"),
                        ("pipe.jpg", "not a regular file")):
        assert f"skipped {normal / rel}: {reason}" in lines
    assert any(line.startswith(f"identity {shown(RAW_BAD)[:-4]} left out of the database: {shown(normal / RAW_BAD)}: "
                               "cannot read image") for line in lines)
    for name in ("Wide", "Tall"):
        assert f"identity {name} left out of the database: no face found in " \
               f"{tmp_path / 'database' / f'{name}_0001.png'}" in lines
    assert align_face_numpy(np.zeros((10, 10, 3), np.uint8), [-3.0, 2.0, 0.4, 8.0, 0.9] + [5.0] * 10) is None


def test_unlistable_folder_is_named(tmp_path, enhancer, capsys, monkeypatch):
    _, checkpoint = enhancer
    (tmp_path / "in" / "locked").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "in" / "a.png")
    real = os.scandir

    def scandir(path):  # what a folder without read permission does (tests may run as root, which reads anything)
        if os.path.basename(os.path.normpath(path)) == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    code, lines = run_test_py(tmp_path / "in", tmp_path / "out", checkpoint, capsys)
    assert code == 0 and f"skipped {tmp_path / 'in' / 'locked'}: cannot list the folder (Permission denied)" in lines
    assert lowlight_main(["--normal_path", str(tmp_path / "in"), "--underexposed_path", str(tmp_path / "dark")]) == 0
    assert f"skipped {tmp_path / 'in' / 'locked'}: cannot list the folder (Permission denied)" in \
        capsys.readouterr().out.splitlines()


# ---------------------------------------------------------------- arguments: one line that says what is allowed

ARGUMENT_ERRORS = [  # (script, arguments, what the line says)
    (test_script, ["--tile=-1"], "argument --tile: an integer >= 1 is allowed, not '-1'"),
    (test_script, ["--tile", "0"], "argument --tile: an integer >= 1 is allowed, not '0'"),
    (test_script, ["--batch_size", "-2"], "argument --batch_size: an integer >= 1 is allowed, not '-2'"),
    (test_script, ["--batch_size", "0"], "argument --batch_size: an integer >= 1 is allowed"),
    (test_script, ["--num_workers", "-1"], "argument --num_workers: an integer >= 0 is allowed, not '-1'"),
    (test_script, ["--device", "foo"], "argument --device: auto, cpu, cuda, cuda:N or mps is allowed, not 'foo'"),
    (test_script, ["--tile", "1.5"], "argument --tile: an integer >= 1 is allowed, not '1.5'"),
    (test_script, ["--bogus"], "unrecognized arguments: --bogus"),
    (evaluate, ["--batch_size", "0"], "argument --batch_size: an integer >= 1 is allowed"),
    (evaluate, ["--dataset_name", "Nope"], "argument --dataset_name: invalid choice: 'Nope' (choose from"),
    (evaluate, ["--device", "cuda:x"], "argument --device: auto, cpu, cuda, cuda:N or mps is allowed"),
    (lowlight, ["--scale", "2"], "argument --scale: a number > 0 and <= 1 is allowed, not '2'"),
    (lowlight, ["--scale", "0"], "argument --scale: a number > 0 and <= 1 is allowed, not '0'"),
    (lowlight, ["--gamma", "-1"], "argument --gamma: a number > 0 is allowed, not '-1'"),
    (lowlight, ["--noise_std", "nan"], "argument --noise_std: a number >= 0 is allowed, not 'nan'"),
    (lowlight, ["--seed", "-1"], "argument --seed: an integer >= 0 is allowed, not '-1'"),
    (train, ["--lr", "0"], "argument --lr: a number > 0 is allowed, not '0'"),
    (train, ["--lr", "inf"], "argument --lr: a number > 0 is allowed, not 'inf'"),
    (train, ["--seed", "-1"], "argument --seed: an integer from 0 to 4294967295 is allowed, not '-1'"),
    (train, ["--crop_size", "8"], "argument --crop_size: an integer >= 32 is allowed, not '8'"),
    (train, ["--dataset_name", "../x"], "argument --dataset_name: a folder name without '/' is allowed, not '../x'"),
    (train, ["--epoch_num", "0"], "argument --epoch_num: an integer >= 1 is allowed, not '0'"),
    (train, ["--gpu_id", "first"], "argument --gpu_id: an integer >= 0 is allowed, not 'first'"),
]


@pytest.mark.parametrize("script, argv, says", ARGUMENT_ERRORS, ids=[" ".join(a) for _, a, _ in ARGUMENT_ERRORS])
def test_argument_errors_are_one_line_saying_what_is_allowed(script, argv, says):
    required = ["--normal_path", "in", "--underexposed_path", "out"] if script is lowlight else []
    with pytest.raises(SystemExit) as stop:
        script.parse_args(required + argv)
    assert stop.value.code == f"error: {says}" or str(stop.value.code).startswith(f"error: {says}")
    assert str(stop.value.code).endswith("(see --help)") and "\n" not in str(stop.value.code)


def test_settings_that_cannot_work_together_are_one_line(tmp_path):
    _folders_of_every_script(tmp_path)
    for run, says in [
            (lambda: lowlight_main(["--normal_path", str(tmp_path / "in"), "--underexposed_path", str(tmp_path / "o"),
                                    "--mode", "scale", "--gamma", "2"]), "error: --gamma applies to --mode gamma only"),
            (lambda: _test_py(tmp_path, "--enhanced_path", str(tmp_path / "o"), "--normal_path", str(tmp_path)),
             "error: --normal_path is used only with --comparison_path"),
            (lambda: _train(tmp_path, "--resume_checkpoint", str(tmp_path / "in" / "a.png")),
             "error: --resume_checkpoint is used only with --resume"),
            (lambda: _train(tmp_path, "--start_epoch", "3", "--epoch_num", "3"),
             "error: --start_epoch 3 is not below --epoch_num 3: nothing to train"),
            (lambda: _train(tmp_path, "--resume", "--checkpoint_root", str(tmp_path / "ckpt")),
             f"error: {tmp_path / 'ckpt' / 'resume.pth'}: no resume point to continue from")]:
        with pytest.raises(SystemExit) as stop:
            run()
        assert str(stop.value.code).startswith(says), stop.value.code
    assert not (tmp_path / "o").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_device_the_machine_lacks_is_one_line(tmp_path, enhancer):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "in" / "a.png")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(SystemExit, match=rf"^error: --device {device}: this machine has no CUDA device .*; use "
                                             r"--device cpu \(or auto\)$"):
            test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                              "--enhance_checkpoint", str(enhancer[1]), "--device", device])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", [["test.py"], ["eval.py"], ["train.py"], ["-m", "utils.lowlight"],
                                    ["-m", "utils.download"], ["benchmarks/benchmark.py"],
                                    ["benchmarks/demo_quality.py"]])
def test_help_and_argument_errors_answer_before_torch_is_imported(script):
    wrong = {"utils.lowlight": ["--seed", "-1"], "utils.download": ["--checkpoint_root"]}.get(script[-1],
                                                                                            ["--device", "gpu"])
    for argv, status in ((["--help"], 0), (wrong, 1)):
        done = subprocess.run([sys.executable, "-X", "importtime", *script, *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        heavy = sorted(name for name in imported if name.split(".")[0] in ("torch", "torchvision", "cv2", "skimage"))
        assert done.returncode == status and heavy == [], (argv, done.returncode, heavy[:5])
        errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert errors == [] if status == 0 else len(errors) == 1 and errors[0].startswith(f"error: argument {wrong[0]}")


# ---------------------------------------------------------------- pixel values by declared depth

def _pnm(path, magic, maxval, values):
    values = np.asarray(values)
    data = values.astype(">u2" if maxval > 255 else "u1").tobytes()
    path.write_bytes(f"{magic}\n{values.shape[1]} {values.shape[0]}\n{maxval}\n".encode() + data)
    return path


def test_deep_images_are_scaled_by_their_declared_depth(tmp_path):
    def grey(path):
        image = read_image(str(path))
        assert (image == image[..., :1]).all()
        return image[..., 0].tolist()
    # a dark 16-bit PGM (maximum 218 of 65535) stays dark, whatever its data's maximum
    assert grey(_pnm(tmp_path / "dark.pgm", "P5", 65535, [[0, 218, 65535]])) == [[0, 1, 255]]
    assert grey(_pnm(tmp_path / "ten_bit.pgm", "P5", 1023, [[0, 100, 1023]])) == [[0, 25, 255]]
    assert grey(_pnm(tmp_path / "eight_bit.pgm", "P5", 255, [[0, 100, 255]])) == [[0, 100, 255]]
    Image.fromarray(np.array([[0, 218, 32896, 65535]], np.uint16)).save(tmp_path / "sixteen.png")
    assert grey(tmp_path / "sixteen.png") == [[0, 1, 128, 255]]
    Image.fromarray(np.array([[0, 65535, 2 ** 31 - 1]], np.int32)).save(tmp_path / "thirty_two.tif")
    assert grey(tmp_path / "thirty_two.tif") == [[0, 0, 127]]
    Image.fromarray(np.array([[0.0, 127.6, 255.0]], np.float32)).save(tmp_path / "float.tif")
    assert grey(tmp_path / "float.tif") == [[0, 128, 255]]

    # values no image holds: a line naming the file and the range
    for name, values in (("nan.tif", [[1.0, np.nan]]), ("inf.tif", [[np.inf, 1.0]]), ("over.tif", [[256.0, 0.0]]),
                         ("negative_float.tif", [[-1.0, 0.0]])):
        Image.fromarray(np.array(values, np.float32)).save(tmp_path / name)
        with pytest.raises(ImageReadError, match=rf"{name}: pixel values outside 0\.\.255 \(the range of its F image"):
            read_image(str(tmp_path / name))
    Image.fromarray(np.array([[-5, 7]], np.int32)).save(tmp_path / "negative.tif")
    with pytest.raises(ImageReadError, match=r"negative.tif: pixel values outside 0\.\.4294967295 .*: -5\.\.7"):
        read_image(str(tmp_path / "negative.tif"))


# ---------------------------------------------------------------- weights that load but cannot work

def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, enhancer, facenet_file, vgg_file):
    model, _ = enhancer
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "in" / "a.png")
    for name, value in (("e_conv3.bias", float("nan")), ("conv.4.weight", float("inf"))):
        state = model.state_dict()
        state[name] = state[name].clone().index_fill_(0, torch.tensor([1]), value)
        torch.save(state, tmp_path / "bad.pth")
        with pytest.raises(SystemExit) as stop:
            test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                              "--enhance_checkpoint", str(tmp_path / "bad.pth"), "--device", "cpu"])
        assert stop.value.code == f"error: {tmp_path / 'bad.pth'}: tensor {name} holds NaN or infinite values " \
                                  "(diverged or damaged weights, which give black or meaningless outputs)"
    assert not (tmp_path / "out").exists()

    facenet = torch.load(facenet_file, weights_only=True)
    facenet["last_bn.running_var"] = facenet["last_bn.running_var"] * float("inf")
    torch.save(facenet, tmp_path / "facenet.pth")
    with pytest.raises(CheckpointError, match="facenet.pth: tensor last_bn.running_var holds NaN or infinite"):
        load_facenet(tmp_path / "facenet.pth")
    vgg = torch.load(vgg_file, weights_only=True)
    vgg["features.0.bias"][0] = float("nan")
    torch.save(vgg, tmp_path / "vgg.pth")
    with pytest.raises(CheckpointError, match="vgg.pth: tensor features.0.bias holds NaN or infinite"):
        load_vgg16(tmp_path / "vgg.pth")


# ---------------------------------------------------------------- reports: counts, and errors known at the start

def test_errors_known_at_the_start_are_reported_before_any_work(tmp_path, capsys):
    _folders_of_every_script(tmp_path)
    (tmp_path / "file").write_text("a regular file")
    for run, says in [
            (lambda: _eval(tmp_path, "--log_path", str(tmp_path / "file" / "eval.txt")),
             f"error: --log_path {tmp_path / 'file' / 'eval.txt'} cannot be created: {tmp_path / 'file'} is a file, "
             "not a folder"),
            (lambda: _eval(tmp_path, "--log_path", str(tmp_path / "in")),
             f"error: --log_path {tmp_path / 'in'} is a folder; a file is needed there"),
            (lambda: _train(tmp_path, "--checkpoint_root", str(tmp_path / "file" / "ckpt")),
             f"error: --checkpoint_root {tmp_path / 'file' / 'ckpt'} cannot be created"),
            (lambda: _test_py(tmp_path, "--enhanced_path", str(tmp_path / "file")),
             f"error: --enhanced_path {tmp_path / 'file'} is a file; a folder is needed there")]:
        with pytest.raises(SystemExit) as stop:
            run()
        assert str(stop.value.code).startswith(says), stop.value.code
    assert capsys.readouterr().out == ""  # not a line of work before the error
    assert not (tmp_path / "database").exists() and not (tmp_path / "encoding").exists()


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
        log = ("--log_path", str(tmp_path / f"{sig.name}-log/train.txt"))  # runs of their own: their own curves
        with open(output, "w") as out:
            proc = subprocess.Popen([sys.executable, "train.py", *train_args(*QUICK, *log, ckpt=sig.name)], cwd=ROOT,
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
            assert proc.returncode == 128 + signal.SIGTERM, output.read_text()[-3000:]
            assert f"stopped at epoch 0 iteration {batch} by SIGTERM; continue with --resume" in output.read_text()
        else:
            assert proc.returncode == -signal.SIGKILL

        train.main(train_args(*QUICK, "--resume", *log, ckpt=sig.name))
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
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM, output.read_text()[-3000:]
    epoch, batch = _resume_point(tmp_path / "group" / "resume.pth")
    assert f"stopped at epoch 0 iteration {batch} by SIGTERM; continue with --resume" in output.read_text()


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
    shutil.copyfile(data / "underexposed" / f"{IDENTITIES[2]}_0001.jpg", data / "underexposed" / "Nobody_0001.jpg")
    shutil.copyfile(data / "seg" / f"{IDENTITIES[2]}_0001.png", data / "seg" / "Nobody_0001.png")
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
    (data / "underexposed" / f"{IDENTITIES[2]}_0002.jpg").write_bytes(b"")
    (data / "seg" / f"{IDENTITIES[1]}_0001.png").unlink()
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
    "resume point of NaN weights": (
        lambda data, t: _resume_from({"optimizer": {}, "images": 6, "world": 1, "args": {"batch_size": 2, "seed": 1},
                                      "model": {"e_conv1.weight": torch.full((2,), float("nan"))}}, t),
        r"cannot resume: .*resume.pth: model: tensor e_conv1.weight holds NaN or infinite values"),
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

    with pytest.raises(CheckpointError, match="Low-FaceNet.pth: not a readable weights-only PyTorch checkpoint") as e:
        read_checkpoint(bomb)
    # PyTorch's reason kept, in whole sentences: what the file asks for, and why loading it anyway is unsafe
    assert str(e.value).endswith("(Unsupported global: GLOBAL io.open was not an allowed global by "
                                 "default. Re-running `torch.load` with `weights_only` set to `False` will likely "
                                 "succeed, but it can result in arbitrary code execution. Do it only if you got the "
                                 "file from a trusted source.)"), str(e.value)
    with pytest.raises(CheckpointError, match="not a readable weights-only"):
        nets.load("enhance", bomb)
    with pytest.raises(SystemExit, match="not a readable weights-only"):
        test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                          "--enhance_checkpoint", str(bomb), "--device", "cpu"])
    assert not marker.exists()

    torch.load(bomb, weights_only=False)["e_conv1.weight"].close()  # the bomb is real: a full unpickling runs it
    assert marker.exists()


def test_pickled_encoding_cache_is_refused_and_rebuilt(tmp_path, face_photos, retinaface_weights, facenet_file):
    ids = IDENTITIES[:2]
    normal, encoding, marker = tmp_path / "normal", tmp_path / "encoding", tmp_path / "exploded"
    copy_faces(face_photos, normal, ids, 1, flat=True)
    face_database.build_database(normal, tmp_path / "database")
    detector, facenet = load_retinaface(retinaface_weights), load_facenet(facenet_file)
    encoding.mkdir()
    np.save(encoding / "S_encoding.npy", np.array([Bomb(marker)], dtype=object), allow_pickle=True)
    np.save(encoding / "S_name.npy", np.array([ids[0]], dtype=object), allow_pickle=True)
    files = {kind: hashlib.sha256((encoding / f"S_{kind}.npy").read_bytes()).hexdigest()
             for kind in ("encoding", "name")}
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
