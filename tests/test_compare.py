"""eval.py comparing methods: `--method_name all` (every SOTAs/ folder plus the dark input), the table (Markdown, CSV,
JSON; best values marked, blank cells with footnotes, partial folders said), partial folders refused unless
--partial, explicit metrics that cannot be computed refused before any work, networks and databases shared across
methods, the figure grid and the verification protocol on faces."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

import eval as evaluate
from conftest import IDENTITIES, copy_faces
from utils.compare import markdown, missing_images
from utils.lowlight import darken
from utils.verification import read_pairs


def _iqa_argv(root, *extra):
    return ["--dataset_root", str(root / "dataset"), "--num_workers", "0", "--log_path", str(root / "eval.txt"),
            "--unique_checkpoint", str(root / "absent.pt"), "--device", "cpu", "--compare_path", str(root / "cmp"),
            *extra]


@pytest.fixture
def iqa_root(tmp_path):
    """dataset/CelebA-Test: normal/ 3 random images; underexposed/ them halved; SOTAs/Same = normal (as .bmp),
    SOTAs/Offset = normal + 10, SOTAs/Half = 1 of the 3 images (identical)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "dataset" / "CelebA-Test"
    images = [rng.integers(20, 231, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    for folder, change, count, ext in (("normal", 0, 3, "png"), ("underexposed", None, 3, "png"),
                                       ("SOTAs/Same", 0, 3, "bmp"), ("SOTAs/Offset", 10, 3, "png"),
                                       ("SOTAs/Half", 0, 1, "png")):
        (data / folder).mkdir(parents=True)
        for i, image in enumerate(images[:count]):
            out = image // 2 if change is None else image + np.uint8(change)
            Image.fromarray(out).save(data / folder / f"{i}.{ext}")
    return tmp_path


def test_all_writes_one_table_with_best_partial_and_footnotes(iqa_root, capsys):
    assert evaluate.main(_iqa_argv(iqa_root, "--dataset_name", "CelebA-Test", "--method_name", "all")) == 1
    out = capsys.readouterr().out
    assert "SOTAs/Half holds 1 of the 3 images" in out and "scored on what it has" in out
    md = (iqa_root / "cmp" / "compare.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    names = ("PSNR ↑", "SSIM ↑", "UNIQUE ↑", "images")
    assert header == "| method | " + " | ".join(f"CelebA-Test {c}" for c in names) + " |"
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ") and "---" not in line}
    assert list(rows) == ["method", "Input", "Half", "Offset", "Same"]  # Input first, then by name
    assert rows["Same"] == "| Same | **100.00** | **1.0000** | [1] | 3 |"  # identical: best, capped at 100 dB
    assert rows["Half"] == "| Half | **100.00** | **1.0000** | [1] | 1 of 3 |"  # ties share the mark
    assert "[1] UNIQUE:" in md and "absent.pt not found" in md and "python -m utils.download" in md
    offset = 20 * np.log10(255 / 10)
    with open(iqa_root / "cmp" / "compare.csv") as f:
        table = {row["method"]: row for row in csv.DictReader(f)}
    assert float(table["Offset"]["CelebA-Test psnr"]) == pytest.approx(offset, abs=1e-3)
    assert table["Half"]["CelebA-Test images"] == "1" and table["Half"]["CelebA-Test set images"] == "3"
    assert table["Same"]["CelebA-Test unique"] == ""
    document = json.loads((iqa_root / "cmp" / "compare.json").read_text())
    assert {"dataset": "CelebA-Test", "metric": "psnr", "methods": ["Half", "Same"]} in document["best"]
    assert document["scores"]["Input"]["CelebA-Test"]["images"] == 3
    # asked for explicitly, a partial score is what the user wants: exit 0
    assert evaluate.main(_iqa_argv(iqa_root, "--dataset_name", "CelebA-Test", "--method_name", "all",
                                   "--partial")) == 0


def test_partial_folder_is_refused_unless_asked(iqa_root, capsys):
    argv = _iqa_argv(iqa_root, "--dataset_name", "CelebA-Test", "--method_name", "Half")
    assert evaluate.main(argv) == 1
    out = capsys.readouterr().out
    assert "holds 1 of the 3 images" in out and "not scored" in out and "--partial" in out
    assert not (iqa_root / "eval.txt").exists()  # nothing scored, nothing logged as if whole
    assert evaluate.main(argv + ["--partial"]) == 0
    assert "scored on 1 of the 3 images of the set (partial)" in capsys.readouterr().out
    assert "images=1 failed=0 set_images=3" in (iqa_root / "eval.txt").read_text()
    assert not (iqa_root / "cmp").exists()  # one method, one set: no table


def test_explicit_metrics_that_cannot_be_computed_stop_before_work(iqa_root, monkeypatch):
    real_spec = evaluate.importlib.util.find_spec
    monkeypatch.setattr(evaluate.importlib.util, "find_spec", lambda name: None if name == "lpips" else real_spec(name))
    argv = _iqa_argv(iqa_root, "--dataset_name", "CelebA-Test", "--method_name", "Same")
    with pytest.raises(SystemExit, match="--lpips needs the lpips package, which is not installed: pip install lpips"):
        evaluate.main(argv + ["--lpips"])
    with pytest.raises(SystemExit, match="--protocol verification applies to the recognition sets"):
        evaluate.main(argv + ["--protocol", "verification"])
    with pytest.raises(SystemExit, match="--method_name all stands alone"):
        evaluate.main(_iqa_argv(iqa_root, "--dataset_name", "CelebA-Test", "--method_name", "all", "Same"))
    assert not (iqa_root / "eval.txt").exists()


def test_missing_images_match_by_stem_and_blank_cells_get_footnotes():
    assert missing_images(["a/1.png", "a/2.png", "3.jpg"], ["a/1.bmp", "3.jpg", "extra.png"]) == ["a/2.png"]
    scores = {"A": {"S": {"psnr": 20.0, "no_face": 3, "images": 2}}, "B": {"S": {"psnr": 25.0, "no_face": 1,
                                                                               "images": 1, "set_images": 2}}}
    md = markdown(scores, [("S", "psnr"), ("S", "no_face"), ("S", "unique")], {("S", "unique"): "why"})
    assert "| A | 20.00 | 3 | [1] | 2 |" in md and "| B | **25.00** | **1** | [1] | 1 of 2 |" in md
    assert md.rstrip().endswith("[1] why")


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory, face_photos):
    """dataset/CASIA-Test: normal/ (LFW layout, 3 identities x 2 photos), underexposed/ (darkened), SOTAs/Ours
    (copies of normal/)."""
    root = tmp_path_factory.mktemp("compare")
    data = root / "dataset" / "CASIA-Test"
    rels = copy_faces(face_photos, data / "normal", IDENTITIES[:3], 2)
    copy_faces(face_photos, data / "SOTAs" / "Ours", IDENTITIES[:3], 2)
    rng = np.random.default_rng(0)
    for rel in rels:
        (data / "underexposed" / rel).parent.mkdir(parents=True, exist_ok=True)
        dark = darken(np.asarray(Image.open(data / "normal" / rel).convert("RGB")), rng, "scale", scale=0.4)
        Image.fromarray(dark).save(data / "underexposed" / rel)
    return root


def _faces_argv(root, retinaface_weights, facenet_file, *extra):
    return ["--dataset_name", "CASIA-Test", "--dataset_root", str(root / "dataset"), "--database_root",
            str(root / "database"), "--encoding_root", str(root / "encoding"), "--log_path", str(root / "eval.txt"),
            "--retinaface_checkpoint", str(retinaface_weights), "--facenet_checkpoint", str(facenet_file),
            "--compare_path", str(root / "cmp"), "--device", "cpu", "--num_workers", "0", "--method_name", "all",
            *extra]


def test_recognition_methods_share_one_database_and_get_a_figure(faces_root, retinaface_weights, facenet_file,
                                                                 monkeypatch, capsys):
    calls = []
    load = evaluate.load_encodings
    monkeypatch.setattr(evaluate, "load_encodings", lambda *a, **k: calls.append(a[0]) or load(*a, **k))
    argv = _faces_argv(faces_root, retinaface_weights, facenet_file, "--figure", "--figure_images", "2")
    assert evaluate.main(argv) == 0
    assert len(calls) == 1  # the normal images are encoded once for both methods
    md = (faces_root / "cmp" / "compare.md").read_text()
    assert "| method | CASIA-Test top-1 % ↑ | CASIA-Test no face ↓ | CASIA-Test images |" in md
    assert "| Input |" in md and "| Ours |" in md
    out = capsys.readouterr().out
    assert "no face found" not in out  # every row's face is enlarged
    with Image.open(faces_root / "cmp" / "figure_CASIA-Test.png") as grid:
        # 2 rows of 250x250 photos at 160 px: Input | Ours | normal, then their 3 faces (square crops)
        assert grid.height > 2 * 160 and grid.width >= 6 * 160


def test_verification_writes_pairs_roc_and_reuses_pairs(faces_root, retinaface_weights, facenet_file, capsys):
    argv = _faces_argv(faces_root, retinaface_weights, facenet_file, "--protocol", "verification", "--gallery",
                       "normal")
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    pairs = faces_root / "cmp" / "pairs_CASIA-Test.txt"
    folds = read_pairs(pairs)  # 3 identities x 2 photos: 3 matched pairs, so 3 folds of one pair of each kind
    assert len(folds) == 3 and all(len(m) == len(n) == 1 for m, n in folds)
    assert "written to" in out and "TAR@FAR 1e-2 not computed (3 mismatched pairs, 100 needed)" in out
    with open(faces_root / "cmp" / "compare.csv") as f:
        first = {row["method"]: row for row in csv.DictReader(f)}
    assert set(first) == {"Input", "Ours"} and first["Ours"]["CASIA-Test tar_at_far_0.01"] == ""
    assert 0 <= float(first["Ours"]["CASIA-Test accuracy"]) <= 100 and 0 <= float(first["Ours"]["CASIA-Test auc"]) <= 1
    assert "mismatched pairs cannot resolve a FAR of 0.01" in (faces_root / "cmp" / "compare.md").read_text()
    assert (faces_root / "cmp" / "roc_CASIA-Test.png").stat().st_size > 1000
    saved = pairs.read_bytes()
    assert evaluate.main(argv + ["--pairs", str(pairs)]) == 0  # the same pairs again: the same figures
    with open(faces_root / "cmp" / "compare.csv") as f:
        assert {row["method"]: row for row in csv.DictReader(f)} == first
    assert pairs.read_bytes() == saved


def test_model_figures_beside_the_speed_table():
    from benchmarks import benchmark
    from nets.enhance import EnhanceNet
    figures = benchmark.part_model(None, None, None, sizes=(64,))
    assert figures["parameters"] == sum(p.numel() for p in EnhanceNet().parameters())
    assert figures["gflop_64x64"] == 2 * 458_928 * 64 * 64 / 1e9  # the multiply-adds per pixel the issue states
    row = benchmark.table({"model": {**figures, "peak_rss_gib": 0.1}})[0]
    assert row[:3] == ("model", "enhancement network", f"{figures['parameters']:,} parameters")
    assert row[3].startswith(f"{figures['gflop_64x64']:.1f} GFLOP at 64x64")
