"""eval.py on tiny data sets of real faces (recognition: accuracy, faceless and unreadable images, the published
--compat rule, unknown identities; IQA: PSNR/SSIM against normal/, stem matching, missing references) and the
low-light synthesis of utils/lowlight.py.

The FaceNet weights of parity_face.pt are not a trained recognizer (every face embeds within cosine 0.999 of
every other), so the recognition sets' enhanced images are copies of the database images: each must find
itself (cosine 1) among the identities.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import eval as evaluate
from conftest import IDENTITIES, ROOT, copy_faces
from utils.face_database import MANIFEST, identity_of
from utils.lowlight import GAMMA_RANGE, SCALE_RANGE, darken
from utils.lowlight import main as lowlight_main

IDS = tuple(IDENTITIES[:3])


@pytest.fixture(scope="module")
def root(tmp_path_factory, face_photos):
    """dataset/CASIA-Test: normal/ (LFW layout, 3 identities x 2 photos); SOTAs/Ours = copies of the database
    images; SOTAs/Messy = the same plus a blank image of the first identity and a corrupt file."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "dataset" / "CASIA-Test"
    copy_faces(face_photos, data / "normal", IDS, 2)
    for method in ("Ours", "Messy"):
        for name in IDS:
            (data / "SOTAs" / method / name).mkdir(parents=True)
            (data / "SOTAs" / method / name / f"{name}_0001.jpg").write_bytes(
                (data / "normal" / name / f"{name}_0001.jpg").read_bytes())
    Image.new("RGB", (250, 250), (128, 128, 128)).save(data / "SOTAs/Messy" / IDS[0] / f"{IDS[0]}_0009.png")
    (data / "SOTAs/Messy" / IDS[1] / f"{IDS[1]}_0009.jpg").write_bytes(b"not a jpeg")
    return root


def _argv(root, retinaface_weights, facenet_file, *extra):
    return ["--dataset_root", str(root / "dataset"), "--database_root", str(root / "database"),
            "--encoding_root", str(root / "encoding"), "--log_path", str(root / "log" / "eval.txt"),
            "--retinaface_checkpoint", str(retinaface_weights), "--facenet_checkpoint", str(facenet_file),
            "--unique_checkpoint", str(root / "absent_unique.pt"), "--device", "cpu", *extra]


def _log_lines(root):
    path = root / "log" / "eval.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_recognition_finds_every_database_copy(root, retinaface_weights, facenet_file, capsys):
    before = _log_lines(root)
    assert evaluate.main(_argv(root, retinaface_weights, facenet_file, "--num_workers", "0")) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy 100.00% (3/3 images, 3 identities in the database); 0 images without a detected face" in out
    lines = _log_lines(root)
    assert len(lines) == len(before) + 1
    assert "dataset=CASIA-Test method=Ours top1=100.0000 correct=3 top1_images=3 no_face=0 compat=0 images=3 " \
           "failed=0" in lines[-1]


def test_eval_script_exit_status(root, retinaface_weights, facenet_file):
    done = subprocess.run([sys.executable, "eval.py", *_argv(root, retinaface_weights, facenet_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "top-1 accuracy 100.00%" in done.stdout and "top1=100.0000" in _log_lines(root)[-1]


@pytest.mark.parametrize("compat", [False, True])
def test_faceless_and_unreadable_images(root, retinaface_weights, facenet_file, capsys, compat):
    argv = _argv(root, retinaface_weights, facenet_file, "--method_name", "Messy", "--num_workers", "0")
    assert evaluate.main(argv + ["--compat"] * compat) == 1
    out = capsys.readouterr().out
    # --compat: the blank image of IDS[0] is a prediction of identity 0, the first of the database folder's listing
    first = next(name for name in os.listdir(root / "database" / "CASIA-Test") if name != MANIFEST)
    assert np.load(root / "encoding" / "CASIA-Test_name.npy").tolist()[0] == (identity_of(first) if compat else IDS[0])
    accuracy = "100.00% (4/4" if compat and identity_of(first) == IDS[0] else "75.00% (3/4"
    assert f"top-1 accuracy {accuracy} images" in out and "1 images without a detected face" in out
    assert f"{IDS[1]}_0009.jpg: cannot read image" in out and "failed images: 1" in out
    assert f"top1_images=4 no_face=1 compat={int(compat)}" in _log_lines(root)[-1]
    assert "images=5 failed=1" in _log_lines(root)[-1]


def test_unknown_identity_is_a_clear_error(root, retinaface_weights, facenet_file):
    stranger = root / "dataset" / "CASIA-Test" / "SOTAs" / "Stranger" / "Nobody_0001.jpg"
    stranger.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(stranger)
    with pytest.raises(SystemExit, match="identity Nobody is not in"):
        evaluate.main(_argv(root, retinaface_weights, facenet_file, "--method_name", "Stranger"))


def _iqa_set(root, name):
    """dataset/NAME/normal: two random PNG images, 40x48 (values 20..230), and the dataset folder."""
    rng = np.random.default_rng(0)
    data = root / "dataset" / name
    (data / "normal").mkdir(parents=True)
    images = [rng.integers(20, 231, (40, 48, 3), dtype=np.uint8) for _ in range(2)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(data / "normal" / f"{i}.png")
    return data, images


def test_iqa_identical_and_offset_images(tmp_path, capsys):
    data, images = _iqa_set(tmp_path, "CelebA-Test")
    for method, offset in (("Same", 0), ("Offset", 10)):
        (data / "SOTAs" / method).mkdir(parents=True)
        for i, image in enumerate(images):  # .bmp: matched to normal/i.png by its stem
            Image.fromarray(image + np.uint8(offset)).save(data / "SOTAs" / method / f"{i}.bmp")
    argv = ["--dataset_name", "CelebA-Test", "--dataset_root", str(tmp_path / "dataset"), "--num_workers", "0",
            "--log_path", str(tmp_path / "eval.txt"), "--unique_checkpoint", str(tmp_path / "absent.pt"), "--device", "cpu"]

    assert evaluate.main(argv + ["--method_name", "Same"]) == 0
    assert "psnr=100.0000 psnr_images=2 psnr_capped=2 ssim=1.0000 ssim_images=2 images=2 failed=0" in \
        (tmp_path / "eval.txt").read_text()  # identical images: PSNR capped at 100 dB
    out = capsys.readouterr().out
    assert "UNIQUE not computed" in out and "python -m utils.download" in out

    assert evaluate.main(argv + ["--method_name", "Offset"]) == 0
    expected = 20 * np.log10(255 / 10)  # MSE = (10/255)^2 on every pixel
    psnr = float((tmp_path / "eval.txt").read_text().splitlines()[-1].split("psnr=")[1].split()[0])
    assert abs(psnr - expected) < 1e-3


def test_iqa_missing_or_mismatched_reference_is_counted(tmp_path, capsys):
    data, images = _iqa_set(tmp_path, "CelebA-Test-2")
    (data / "SOTAs" / "Ours").mkdir(parents=True)
    Image.fromarray(images[0]).save(data / "SOTAs" / "Ours" / "0.png")
    Image.fromarray(images[1]).save(data / "SOTAs" / "Ours" / "extra.png")
    Image.fromarray(images[1][:32]).save(data / "SOTAs" / "Ours" / "1.png")
    argv = ["--dataset_name", "CelebA-Test-2", "--dataset_root", str(tmp_path / "dataset"), "--num_workers", "0",
            "--log_path", str(tmp_path / "eval.txt"), "--unique_checkpoint", str(tmp_path / "absent.pt"), "--device", "cpu"]
    assert evaluate.main(argv) == 1
    out = capsys.readouterr().out
    assert "extra.png: no reference image of that name" in out
    assert "1.png: size (32, 48) differs from its reference's (40, 48)" in out
    assert "PSNR 100.0000 over 1 of 3 images; 2 left out (named above); 1 at the 100 dB cap" in out
    assert "psnr=100.0000 psnr_images=1 psnr_capped=1 ssim=1.0000 ssim_images=1 images=3 failed=2" in \
        (tmp_path / "eval.txt").read_text()


def test_real_set_without_unique_is_refused_before_work(tmp_path):
    (tmp_path / "dataset" / "real" / "SOTAs" / "Ours").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "dataset" / "real" / "SOTAs" / "Ours" / "a.png")
    argv = ["--dataset_name", "real", "--dataset_root", str(tmp_path / "dataset"), "--num_workers", "0",
            "--log_path", str(tmp_path / "eval.txt"), "--unique_checkpoint", str(tmp_path / "absent.pt"), "--device", "cpu"]
    with pytest.raises(SystemExit, match="real has no normal/ images, so UNIQUE is its only figure.*utils.download"):
        evaluate.main(argv)  # it measured nothing and exited 0 before (issue 19, point 7)
    assert not (tmp_path / "eval.txt").exists()


# ---------------------------------------------------------------- low-light synthesis

def test_darken_is_seeded_and_within_published_ranges():
    image = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    rng = lambda seed: np.random.default_rng(seed)
    for mode in ("gamma", "scale"):
        assert np.array_equal(darken(image, rng(1), mode), darken(image, rng(1), mode))
        assert not np.array_equal(darken(image, rng(1), mode), darken(image, rng(2), mode))

    noiseless = darken(image, rng(1), "gamma", noise_std=0)
    assert np.all(darken(image, rng(1), "gamma", gamma=GAMMA_RANGE[1], noise_std=0) <= noiseless)
    assert np.all(noiseless <= darken(image, rng(1), "gamma", gamma=GAMMA_RANGE[0], noise_std=0))
    scaled = darken(image, rng(1), "scale")
    assert np.all((image * SCALE_RANGE[0]).astype(np.uint8) <= scaled)
    assert np.all(scaled <= (image * SCALE_RANGE[1]).astype(np.uint8))

    # noise of std 0.26..0.30 cast to uint8: +1 where it is >= 1, 255 (wrapped, saturated) where it is <= -1
    big = np.full((400, 400, 3), 100, np.uint8)
    clean = darken(big, rng(1), "gamma", gamma=2.2, noise_std=0)
    noisy = darken(big, rng(1), "gamma", gamma=2.2, noise_std=0.3)
    changed = noisy != clean
    assert 0 < changed.mean() < 0.01
    assert set(np.unique(noisy[changed]).tolist()) <= {int(clean[0, 0, 0]) + 1, 255}


def test_lowlight_script_mirrors_folder_and_keeps_existing(tmp_path):
    src, dst = tmp_path / "normal", tmp_path / "underexposed"
    (src / "A").mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(src / "A" / "A_0001.png")
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(src / "B_0001.png")
    args = ["--normal_path", str(src), "--underexposed_path", str(dst), "--mode", "gamma", "--seed", "1"]
    assert lowlight_main(args) == 0
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png")) == ["A/A_0001.png", "B_0001.png"]
    first = (dst / "A" / "A_0001.png").read_bytes()
    assert np.asarray(Image.open(dst / "A" / "A_0001.png")).max() < 200

    (dst / "B_0001.png").write_bytes(b"kept")
    assert lowlight_main(args) == 0
    assert (dst / "B_0001.png").read_bytes() == b"kept"
    assert lowlight_main(args + ["--overwrite"]) == 0
    assert (dst / "A" / "A_0001.png").read_bytes() == first and (dst / "B_0001.png").read_bytes() != b"kept"
