"""The measuring scripts run and report what they claim (their figures themselves are not asserted: speed is
never tested, and quality depends on the weights)."""
import json
import shutil

import numpy as np
import pytest
import torch

from benchmarks import benchmark, demo_quality
from nets.enhance import EnhanceNet, init_weights
from utils.images import read_image, to_tensor
from utils.metrics import psnr

from conftest import ROOT

SAMPLES = ROOT / "dataset" / "samples"


def test_speed_benchmark_quick_run_writes_its_table(tmp_path, capsys):
    out = tmp_path / "speed.json"
    benchmark.main(["--quick", "--parts", "ceiling,enhance", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"ceiling", "enhance"}
    assert "error" not in results["enhance"]  # the part checks its hook-counted FLOPs against 458,928 MACs/pixel
    assert results["ceiling"]["gflops"] > 0 and results["ceiling"]["peak_rss_gib"] > 0
    for size in ("128x128", "256x256"):
        figures = results["enhance"][size]
        assert figures["gflop"] == 2 * 458_928 * int(size.split("x")[0]) ** 2 / 1e9
        assert figures["gflops"] == pytest.approx(figures["gflop"] / figures["seconds"], rel=1e-9)
        top = max(figures["ceiling_beside"], results["ceiling"]["gflops"])
        assert figures["of_ceiling"] == pytest.approx(figures["gflops"] / top, rel=1e-9)
    assert "of the ceiling" in capsys.readouterr().out


def test_speed_benchmark_passes_amp_on_to_test_py(tmp_path):
    out = tmp_path / "amp.json"
    benchmark.main(["--quick", "--amp", "--parts", "test_py", "--json", str(out)])
    results = json.loads(out.read_text())["results"]["test_py"]
    assert "error" not in results, results["error"]
    assert results["images"] == 8 and results["images_per_s"] > 0


def test_speed_benchmark_reports_each_precision_against_the_cpu(tmp_path, capsys):
    out = tmp_path / "precision.json"
    benchmark.main(["--quick", "--parts", "precision,train_largest", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    precision = results["precision"]
    assert "error" not in precision, precision["error"]
    assert precision["fp32"] == precision["tf32"] == {"max_levels": 0, "mean_levels": 0}  # the CPU has no TF32
    assert 0 < precision["bf16"]["mean_levels"] < 1 <= precision["bf16"]["max_levels"] < 8  # bf16 autocast is on
    assert "CUDA only" in results["train_largest"]["skipped"]
    assert "bf16 against the CPU's float32" in capsys.readouterr().out


def test_demo_bar():
    dark = {"psnr": 10.0, "ssim": 0.5, "da": 1.0, "db": 1.0, "faces": 3}
    clahe = {"psnr": 12.0, "ssim": 0.6, "da": 1.0, "db": 1.0, "faces": 3}
    good = {"psnr": 13.5, "ssim": 0.7, "da": 2.0, "db": 4.9, "faces": 3}
    figures = {"dark input": dark, "CLAHE": clahe}
    assert demo_quality.meets_bar(good, figures)
    for change in ({"psnr": 12.9}, {"psnr": 11.5}, {"ssim": 0.55}, {"db": 5.0}, {"da": 6.0}, {"faces": 2}):
        assert not demo_quality.meets_bar({**good, **change}, figures), change


def test_demo_quality_measures_every_set(tmp_path, face_photos, retinaface_weights):
    faces = tmp_path / "faces"
    for p in sorted(face_photos.rglob("*.jpg"))[:2]:
        (faces / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, faces / p.parent.name / p.name)
    weights = tmp_path / "random.pth"
    torch.manual_seed(0)
    torch.save(init_weights(EnhanceNet()).state_dict(), weights)
    out = tmp_path / "quality.json"
    demo_quality.main(["--enhance_checkpoint", str(weights), "--samples", str(SAMPLES), "--faces", str(faces),
                       "--retinaface_checkpoint", str(retinaface_weights), "--device", "cpu", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [results[s]["images"] for s in results] == [5, 2, 2]
    samples = results["samples"]
    low = [to_tensor(read_image(str(SAMPLES / d / f"astronaut_000{k}.png")))[None] for d in ("underexposed", "normal")
           for k in range(1, 6)]
    expected = np.mean([float(psnr(low[k], low[5 + k])) for k in range(5)])
    assert abs(samples["dark input"]["psnr"] - expected) < 1e-4
    assert samples["dark input"]["faces"] >= 1
    # fresh weights darken (i = x + sigmoid(~0) = x + 0.5): far from the bar
    assert results["faces gamma 2.2"]["random.pth"]["meets_bar"] is False
