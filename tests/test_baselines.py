"""utils.baselines: each training-free enhancer against values computed independently here (a direct OpenCV call,
the formula, LIME's objective written out pixel by pixel), and the script's folder handling."""
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from utils import baselines


@pytest.fixture(scope="module")
def dark():
    """A 16x18 low-light image: a smooth ramp, a bright square and noise (values 0..120)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:16, :18]
    image = 10 + 3 * xx[..., None] + rng.integers(0, 12, (16, 18, 3))
    image[4:9, 5:11] += 40
    return np.clip(image, 0, 120).astype(np.uint8)


def test_gamma_matches_the_formula(dark):
    expected = [[[round(255 * (v / 255) ** (1 / 2.2)) for v in px] for px in row] for row in dark.tolist()]
    assert baselines.gamma_correct(dark, 2.2).tolist() == expected


def test_he_and_clahe_match_opencv_on_the_luminance(dark):
    big = cv2.resize(dark, (72, 64), interpolation=cv2.INTER_NEAREST)  # CLAHE's 8x8 tiles need a few pixels each
    ycrcb = cv2.cvtColor(big, cv2.COLOR_RGB2YCrCb)
    for enhanced, y in ((baselines.equalize(big), cv2.equalizeHist(ycrcb[..., 0].copy())),
                        (baselines.clahe(big, 3.0, 4), cv2.createCLAHE(3.0, (4, 4)).apply(ycrcb[..., 0].copy()))):
        expected = cv2.cvtColor(np.dstack([y, ycrcb[..., 1], ycrcb[..., 2]]), cv2.COLOR_YCrCb2RGB)
        assert np.array_equal(enhanced, expected)
    assert cv2.cvtColor(baselines.equalize(big), cv2.COLOR_RGB2YCrCb)[..., 0].max() == 255  # stretched to the top


def _lime_matrix_by_hand(t_hat, alpha, sigma, eps):
    """LIME's normal equations written out: energy sum (t - t_hat)^2 + alpha sum w~_d(p) (t_q - t_p)^2 over forward
    neighbours q of p, with w~_d from strategy III computed by explicit loops (mirrored border, no edge repeat)."""
    h, w = t_hat.shape
    r = int(math.ceil(3 * sigma))
    g = np.array([math.exp(-k * k / (2 * sigma * sigma)) for k in range(-r, r + 1)])
    g /= g.sum()
    a = np.eye(h * w)
    for dy, dx in ((0, 1), (1, 0)):
        grad = np.zeros((h, w))
        for i in range(h - dy):
            for j in range(w - dx):
                grad[i, j] = t_hat[i + dy, j + dx] - t_hat[i, j]
        padded = np.pad(grad, r, mode="reflect")
        for i in range(h - dy):
            for j in range(w - dx):
                smoothed = sum(g[u] * g[v] * padded[i + u, j + v] for u in range(2 * r + 1) for v in range(2 * r + 1))
                weight = 1 / (abs(smoothed) + eps) / (abs(grad[i, j]) + eps)
                p, q = i * w + j, (i + dy) * w + j + dx
                for m, n, s in ((p, p, 1), (q, q, 1), (p, q, -1), (q, p, -1)):
                    a[m, n] += alpha * weight * s
    return a


def test_lime_illumination_solves_its_linear_system(dark):
    t_hat = dark.max(axis=2) / 255.0
    a = _lime_matrix_by_hand(t_hat, 0.15, 2.0, 1e-3)
    assert np.allclose(baselines.lime_system(t_hat, 0.15, 2.0, 1e-3).toarray(), a, rtol=1e-9, atol=1e-6)
    t = baselines.lime_illumination(dark, 0.15, 2.0, 1e-3).ravel()
    assert np.linalg.norm(a @ t - t_hat.ravel()) / np.linalg.norm(t_hat) < 1e-9  # the stated residual
    assert np.std(np.diff(t.reshape(t_hat.shape), axis=1)) < np.std(np.diff(t_hat, axis=1))  # smoother than t_hat


def test_lime_divides_by_the_gamma_corrected_map(dark):
    t = np.maximum(baselines.lime_illumination(dark), 1e-3) ** 0.8
    expected = np.rint(np.clip(dark / 255 / t[..., None], 0, 1) * 255)
    assert np.array_equal(baselines.lime(dark), expected.astype(np.uint8))
    assert baselines.lime(dark).mean() > 1.5 * dark.mean()


def test_script_mirrors_folders_keeps_outputs_and_names_failures(tmp_path, dark, capsys):
    low = tmp_path / "dataset" / "Mine" / "underexposed"
    (low / "A").mkdir(parents=True)
    Image.fromarray(dark).save(low / "A" / "A_0001.png")
    Image.fromarray(dark).save(low / "b.jpg", quality=95)
    (low / "broken.png").write_bytes(b"not a png")
    argv = ["--dataset_name", "Mine", "--dataset_root", str(tmp_path / "dataset"), "--methods", "gamma", "lime"]
    assert baselines.main(argv) == 1
    out = capsys.readouterr().out
    assert "broken.png: cannot read image" in out and "done: 4 written, 0 kept, 1 failed" in out
    sotas = tmp_path / "dataset" / "Mine" / "SOTAs"
    for method in ("gamma", "lime"):
        assert sorted(p.relative_to(sotas / method).as_posix() for p in (sotas / method).rglob("*")
                      if p.is_file() and p.name != ".made_by.json") == ["A/A_0001.png", "b.jpg"]
    assert np.array_equal(np.asarray(Image.open(sotas / "gamma" / "A" / "A_0001.png")),
                          baselines.gamma_correct(dark))
    (low / "broken.png").unlink()
    (sotas / "gamma" / "b.jpg").write_bytes(b"kept")
    assert baselines.main(argv) == 0 and (sotas / "gamma" / "b.jpg").read_bytes() == b"kept"
    assert "done: 0 written, 4 kept, 0 failed" in capsys.readouterr().out
    assert baselines.main(argv + ["--overwrite"]) == 0 and (sotas / "gamma" / "b.jpg").read_bytes() != b"kept"


def test_other_settings_never_mix_with_earlier_outputs(tmp_path, dark, capsys):
    """A folder of gamma 2.2 outputs refuses a gamma 1.5 run in one line (nothing written); --overwrite replaces
    every output and records the new settings."""
    low = tmp_path / "dataset" / "Mine" / "underexposed"
    low.mkdir(parents=True)
    Image.fromarray(dark).save(low / "a.png")
    argv = ["--dataset_name", "Mine", "--dataset_root", str(tmp_path / "dataset"), "--methods", "gamma"]
    assert baselines.main(argv) == 0
    out = tmp_path / "dataset" / "Mine" / "SOTAs" / "gamma" / "a.png"
    before = out.read_bytes()
    with pytest.raises(SystemExit) as stop:
        baselines.main(argv + ["--gamma", "1.5"])
    assert "holds outputs of other settings: gamma (was 2.2, now 1.5)" in str(stop.value.code)
    assert "--overwrite" in str(stop.value.code) and out.read_bytes() == before
    assert baselines.main(argv + ["--gamma", "1.5", "--overwrite"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), baselines.gamma_correct(dark, 1.5))
    assert baselines.main(argv + ["--gamma", "1.5"]) == 0  # the record now names gamma 1.5
    assert "done: 0 written, 1 kept, 0 failed" in capsys.readouterr().out


def test_script_refuses_a_missing_set_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "utils.baselines", "--dataset_name", "Nope", "--dataset_root",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "underexposed: folder not found" in done.stderr and "python -m utils.download --datasets Nope" in done.stderr


def test_help_answers_before_the_heavy_imports():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "utils.baselines", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert done.returncode == 0 and "--lime_alpha" in done.stdout
    assert not imported & {"torch", "cv2", "scipy", "numpy"}
