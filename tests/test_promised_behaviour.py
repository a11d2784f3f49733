"""What the scripts promise, exercised end to end on tiny runs: best.pth by --best_metric and --val_every, SIGINT
and resume at batch 2, resuming from a bare epochN.pth, --weight_decay, --lr, --precision, --backbone
inception_resnetv1, --preview_images, --compile, torchrun with --resume and validation, DDP gradients, UNIQUE and
--dataset_name samples in eval.py, test.py --tile, utils.lowlight and utils.face_photos from their command lines,
benchmark --repeat/--test_batch. Expected values come from the test (formulas, hand-computed values, other runs)."""
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import eval as evaluate
import test as test_script
import train
from conftest import IDENTITIES, ROOT
from parity_weights import fill
from nets.enhance import EnhanceNet, init_weights
from nets.facenet import FaceNet
from nets.unique import UNIQUE
from utils.images import read_image, to_tensor, to_uint8, write_image
from utils.validation import Validation

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def _run(cmd, cwd=ROOT, timeout=600):
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# ---------------------------------------------------------------- best.pth follows --best_metric

@pytest.fixture(scope="module")
def two_images(tmp_path_factory, tiny_dataset):
    """dataset/ with LaPa-Face holding the first photo of two identities of tiny_dataset (one iteration of batch 2
    an epoch: the face detector then runs on two images an epoch), and tiny_dataset's Contrast."""
    root = tmp_path_factory.mktemp("two_images")
    for sub, ext in (("normal", ".jpg"), ("underexposed", ".jpg"), ("seg", ".png")):
        for name in IDENTITIES[:2]:
            (root / "LaPa-Face" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tiny_dataset / "LaPa-Face" / sub / f"{name}_0001{ext}",
                            root / "LaPa-Face" / sub / f"{name}_0001{ext}")
    return root

# scripted validations, by epoch: (psnr, ssim, face_acc)
SCRIPT = {0: (20.0, 0.5, 0.5), 1: (22.0, 0.4, 0.5), 2: (21.0, 0.6, 0.7), 3: (22.0, 0.6, 0.6)}
BEST = [  # (--best_metric, --val_every, epochs validated, epoch best.pth must hold)
    ("psnr", 1, [0, 1, 2, 3], 1),      # epoch 3 ties epoch 1 on psnr 22 (and on the psnr tie-break): the first stays
    ("ssim", 1, [0, 1, 2, 3], 3),      # epochs 2 and 3 tie on ssim 0.6: psnr 22 > 21 breaks it
    ("face_acc", 1, [0, 1, 2, 3], 2),  # 0.7 at epoch 2 beats later 0.6; epochs 0 and 1 tie on 0.5, psnr picks 1
    ("face_acc", 2, [1, 3], 3),        # only epochs 1 and 3 are validated
]


@pytest.mark.parametrize("metric, every, validated, best", BEST, ids=[f"{m}-every{e}" for m, e, _, _ in BEST])
def test_best_checkpoint_follows_the_chosen_metric_ties_and_all(train_args, two_images, tmp_path, monkeypatch, metric,
                                                                every, validated, best):
    calls = []

    def scripted(self, model, device, precision="tf32", preview_images=4, **kwargs):
        epoch = max(int(f[5:-4]) for f in os.listdir(tmp_path / "ckpt") if f.startswith("epoch"))
        calls.append((epoch, preview_images))
        psnr, ssim, face_acc = SCRIPT[epoch]
        preview = np.full((8 * preview_images, 24, 3), 128, np.uint8) if preview_images else None
        return dict(psnr=psnr, ssim=ssim, brightness=0.5, face_acc=face_acc, no_face=0, images=2), preview

    monkeypatch.setattr(Validation, "__call__", scripted)
    previews = 0 if every == 2 else 2
    train.main(train_args("--dataset_root", str(two_images), "--epoch_num", "4", "--batch_size", "2",
                          "--crop_size", "32", "--val_dataset", "LaPa-Face", "--best_metric", metric,
                          "--val_every", str(every), "--preview_images", str(previews)))
    assert calls == [(epoch, previews) for epoch in validated]
    _same_weights(_weights(tmp_path / "ckpt/best.pth"), _weights(tmp_path / f"ckpt/epoch{best}.pth"))
    log = (tmp_path / "log/train.txt").read_text()
    assert f"best.pth holds epoch {best} ({metric} " in log.splitlines()[-2]
    written = sorted(os.listdir(tmp_path / "log/previews")) if previews else []
    assert written == ([f"epoch{e}.png" for e in validated] if previews else [])
    if not previews:
        assert not (tmp_path / "log/previews").exists()


# ---------------------------------------------------------------- SIGINT, resume at batch 2, optimizer flags

def _resume_point(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not there yet, or being replaced
        return None
    return state["epoch"], state["batch"]


def test_sigint_at_batch_2_resumes_to_the_weights_of_an_uninterrupted_run(train_args, tmp_path):
    """6 images, batch 2: 3 iterations. An error that skips start_batch items instead of start_batch * batch_size
    on resume trains other images. The optimizer flags are the ones the optimizer holds; --precision fp32 turns
    TF32 convolutions off."""
    flags = ("--crop_size", "64", "--batch_size", "2", "--epoch_num", "1", "--save_every", "1", "--log_every", "1",
             "--deterministic", "--lr", "3e-4", "--weight_decay", "0.05", "--precision", "fp32")
    torch.backends.cudnn.allow_tf32 = True
    train.main(train_args(*flags, ckpt="straight"))
    assert torch.backends.cudnn.allow_tf32 is False  # fp32: no TF32 convolutions (tf32 leaves them on)
    expected = _weights(tmp_path / "straight/epoch0.pth")
    group = _weights(tmp_path / "straight/resume.pth")["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"]) == (3e-4, 0.05)

    out = tmp_path / "sigint.txt"
    own_log = ("--log_path", str(tmp_path / "log-sigint/train.txt"))  # one run, one place (train.py refuses to mix)
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "train.py", *train_args(*flags, *own_log, ckpt="sigint")],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while (_resume_point(tmp_path / "sigint/resume.pth") or (0, 0))[1] < 1:
        assert proc.poll() is None and time.time() < deadline, out.read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130  # so that `train.py && next` stops
    epoch, batch = _resume_point(tmp_path / "sigint/resume.pth")
    assert epoch == 0 and 1 <= batch < 3, batch
    text = out.read_text()
    assert f"stopped at epoch 0 iteration {batch} by SIGINT; continue with --resume" in text
    assert "Traceback" not in text
    assert not (tmp_path / "sigint/epoch0.pth").exists()

    train.main(train_args(*flags, *own_log, "--resume", ckpt="sigint"))
    _same_weights(_weights(tmp_path / "sigint/epoch0.pth"), expected, atol=1e-6)


def test_resume_from_a_bare_epoch_checkpoint_continues_from_its_weights(train_args, two_images, tmp_path):
    """--resume --resume_checkpoint epoch0.pth --start_epoch 1: epoch 1 starts from epoch 0's weights, not a fresh
    initialization (with lr 1e-9 Adam moves each weight by at most about 1e-9 in its one step)."""
    quick = ("--dataset_root", str(two_images), "--crop_size", "32", "--batch_size", "2")
    train.main(train_args(*quick, "--epoch_num", "1", ckpt="first"))
    start = _weights(tmp_path / "first/epoch0.pth")
    torch.backends.cudnn.allow_tf32 = False
    train.main(train_args(*quick, "--epoch_num", "2", "--start_epoch", "1", "--lr", "1e-9", "--resume",
                          "--resume_checkpoint", str(tmp_path / "first/epoch0.pth"), "--precision", "tf32",
                          ckpt="second"))
    assert torch.backends.cudnn.allow_tf32 is True  # tf32: TF32 convolutions on (fp32 turns them off)
    assert sorted(os.listdir(tmp_path / "second")) == ["epoch1.pth", "resume.pth"]
    _same_weights(_weights(tmp_path / "second/epoch1.pth"), start, atol=1e-7)
    assert f"resumed from {tmp_path / 'first/epoch0.pth'} at epoch 1, iteration 0" in \
        (tmp_path / "log/train.txt").read_text()


# ---------------------------------------------------------------- --backbone inception_resnetv1, --compile

def test_inception_resnetv1_backbone_trains_end_to_end(train_args, tmp_path):
    path = tmp_path / "facenet_inception_resnetv1.pth"
    torch.save(fill(FaceNet("inception_resnetv1"), "facenet", 1).state_dict(), path)
    train.main(train_args("--backbone", "inception_resnetv1", "--facenet_checkpoint", str(path), "--batch_size", "2",
                          "--max_iters", "1", "--log_every", "1"))
    encodings = np.load(tmp_path / "encoding/LaPa-Face_encoding.npy")
    assert encodings.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(encodings, axis=1), 1, rtol=1e-5)
    line = next(x for x in (tmp_path / "log/train.txt").read_text().splitlines() if x.startswith("epoch 0 iter 1/"))
    assert math.isfinite(float(line.split(" face ")[1].split()[0]))
    assert _resume_point(tmp_path / "ckpt/resume.pth") == (0, 1)


def test_compile_through_train_py_gives_the_eager_weights(train_args, tmp_path, monkeypatch):
    """train.py --compile reduce-overhead: torch.compile gets that mode for the network, the VGG taps and the image
    terms, and the run steps as the eager one. Dynamo traces the real step; the graphs run on its eager backend (the
    inductor backend would compile C++ for minutes on a small CPU)."""
    modes = []
    real_compile = torch.compile

    def compile_eager(fn, mode=None, **kwargs):
        modes.append(mode)
        return real_compile(fn, backend="eager")

    quick = ("--crop_size", "32", "--batch_size", "2", "--max_iters", "2", "--deterministic")
    train.main(train_args(*quick, ckpt="eager"))
    monkeypatch.setattr(torch, "compile", compile_eager)
    try:
        train.main(train_args(*quick, "--compile", "reduce-overhead",
                              "--log_path", str(tmp_path / "log-compiled/train.txt"),
                              ckpt="compiled"))
    finally:
        torch._dynamo.reset()
    assert modes == ["reduce-overhead"] * 3
    compiled = _weights(tmp_path / "compiled/resume.pth")["model"]
    assert not any(k.startswith("_orig_mod") for k in compiled)  # keys as published
    _same_weights(compiled, _weights(tmp_path / "eager/resume.pth")["model"], atol=1e-6)


# ---------------------------------------------------------------- torchrun: resume with validation; DDP gradients

def _torchrun(script_args, cwd, nproc=2):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                 *script_args], cwd=cwd)


def test_torchrun_resumes_and_validates(train_args, tmp_path):
    flags = ("--crop_size", "32", "--batch_size", "1", "--epoch_num", "1", "--val_dataset", "LaPa-Face",
             "--memory_format", "channels_last", "--preview_images", "1")
    _torchrun([os.path.join(ROOT, "train.py"), *train_args(*flags, "--max_iters", "1")], tmp_path)
    assert _resume_point(tmp_path / "ckpt/resume.pth") == (0, 1)
    out = _torchrun([os.path.join(ROOT, "train.py"), *train_args(*flags, "--resume")], tmp_path)
    assert "resumed from" in out and "at epoch 0, iteration 1" in out
    log = (tmp_path / "log/train.txt").read_text().splitlines()
    validations = [x for x in log if x.startswith("validation epoch 0 on LaPa-Face (6 images)")]
    assert len(validations) == 1 and "best.pth holds epoch 0" in validations[0]
    _same_weights(_weights(tmp_path / "ckpt/best.pth"), _weights(tmp_path / "ckpt/epoch0.pth"))
    assert read_image(tmp_path / "log/previews/epoch0.png").shape[0] == 250  # --preview_images 1: one row
    assert _resume_point(tmp_path / "ckpt/resume.pth") == (1, 0)


DDP_WORKER = '''
import sys, torch
from torch.nn.parallel import DistributedDataParallel
from utils import distributed
from nets.enhance import EnhanceNet, init_weights
from nets.losses import LowFaceNetObjective
from nets.vgg import load_vgg16
setup_file, out = sys.argv[1:]
rank, world, device = distributed.setup("cpu")
setup = torch.load(setup_file, weights_only=True)
objective = LowFaceNetObjective(load_vgg16(setup["vgg"]))
torch.manual_seed(0)
net = init_weights(EnhanceNet())
model = DistributedDataParallel(net) if world > 1 else net
optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
share = len(setup["batch"][0]) // world
low, seg, labels, pos, neg = [t[rank * share:(rank + 1) * share] for t in setup["batch"]]
grads = []
for step in range(3):
    total, terms, _ = objective(*model(low), low, pos, neg, seg)
    optimizer.zero_grad()
    total.backward()
    grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    optimizer.step()
if rank == 0:
    torch.save({"grads": grads, "weights": net.state_dict()}, out)
distributed.cleanup()
'''


def test_two_ranks_give_the_gradients_of_one_process_over_three_sgd_steps(tiny_dataset, tmp_path, vgg_file):
    """The gradients themselves (not Adam's +-lr steps) of 2 ranks x 2 images against 1 process x 4 images, at each
    of 3 SGD steps, and the weights after them. Every image term is a ratio, product or broadcast of means over the
    global batch, so a rank that used its own means would be off by percents; rounding is within 1e-5 of the
    largest gradient. (The face loss, a plain mean of cross-entropies, is left out: it would need faces found.)"""
    from utils.data import TrainSet, collate_training, training_batch
    face_set = tiny_dataset / "LaPa-Face"
    data = TrainSet(str(face_set), IDENTITIES[:3], 64, str(tiny_dataset / "Contrast/high"),
                    str(tiny_dataset / "Contrast/low"))
    batch = training_batch(collate_training([data[i] for i in (0, 2, 3, 5)]), 64, torch.device("cpu"))
    torch.save({"batch": batch, "vgg": str(vgg_file)}, tmp_path / "setup.pt")
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    _run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "setup.pt"), str(tmp_path / "one.pt")])
    _torchrun([str(tmp_path / "worker.py"), str(tmp_path / "setup.pt"), str(tmp_path / "two.pt")], tmp_path)
    one, two = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    for step, (g1, g2) in enumerate(zip(one["grads"], two["grads"])):
        scale = max(g.abs().max().item() for g in g1.values())
        for k in g1:
            torch.testing.assert_close(g2[k], g1[k], rtol=0, atol=1e-4 * scale, msg=f"step {step}: {k}")
    _same_weights(two["weights"], one["weights"], atol=1e-6)


# ---------------------------------------------------------------- eval.py: UNIQUE and --dataset_name samples

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_eval_scores_the_bundled_samples_with_a_formula_weighted_unique(tmp_path, capsys):
    """eval.py --dataset_name samples scoring the dark inputs themselves: PSNR = 10 log10(1 / MSE) of each pair and
    UNIQUE = the first output of the network on the ImageNet-normalized image (all sides below 768: no resize)."""
    root = tmp_path / "dataset"
    shutil.copytree(ROOT / "dataset/samples/normal", root / "samples/normal")
    shutil.copytree(ROOT / "dataset/samples/underexposed", root / "samples/SOTAs/dark")
    model = UNIQUE()
    state = {}
    for k, v in model.state_dict().items():  # the parity formula, tag 'unique', in the published DataParallel file
        state["module." + k] = fill_one(f"unique.{k}", v)
    torch.save(state, tmp_path / "unique.pt")
    model.load_state_dict({k[7:]: v for k, v in state.items()})
    model.eval()
    status = evaluate.main(["--dataset_name", "samples", "--method_name", "dark", "--dataset_root", str(root),
                            "--unique_checkpoint", str(tmp_path / "unique.pt"), "--log_path", str(tmp_path / "e.txt"),
                            "--device", "cpu", "--num_workers", "0"])
    assert status == 0
    psnrs, uniques = [], []
    for name in sorted(os.listdir(root / "samples/normal")):
        x = read_image(root / "samples/SOTAs/dark" / name).astype(np.float64) / 255
        y = read_image(root / "samples/normal" / name).astype(np.float64) / 255
        psnrs.append(10 * math.log10(1 / np.mean((x - y) ** 2)))
        t = torch.from_numpy(x).permute(2, 0, 1).float()
        t = (t - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        with torch.no_grad():
            uniques.append(model(t[None])[0, 0].item())
    line = (tmp_path / "e.txt").read_text().splitlines()[-1]
    figures = dict(item.split("=") for item in line.split()[1:])
    assert figures["dataset"] == "samples" and figures["images"] == "5" and figures["unique_images"] == "5"
    assert float(figures["psnr"]) == pytest.approx(np.mean(psnrs), abs=2e-4)
    assert float(figures["unique"]) == pytest.approx(np.mean(uniques), rel=1e-4, abs=1e-4)
    assert "UNIQUE skipped" not in capsys.readouterr().out


def fill_one(name, tensor):
    from parity_weights import formula_value
    if not tensor.is_floating_point():
        return tensor.clone()
    return torch.from_numpy(formula_value(name, tuple(tensor.shape), 1).astype(np.float32))


# ---------------------------------------------------------------- test.py --tile end to end

def test_test_py_tiles_images_several_tiles_wide_and_tall(tmp_path, monkeypatch):
    """--tile 24 on images of 101x77, 50x130 and 24x25 (several tiles each way, odd sizes, one just over a tile):
    the network sees windows of at most 24 + 2 x 11 pixels (5 x 4, 3 x 6 and 1 x 2 of them), and the files written
    are the bytes of the whole image through the network at once."""
    windows = []
    forward = EnhanceNet.forward
    monkeypatch.setattr(EnhanceNet, "forward", lambda self, x: windows.append(tuple(x.shape[-2:])) or forward(self, x))
    torch.manual_seed(3)
    model = init_weights(EnhanceNet(), std=0.1)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (50, 130), "tall_odd.png": (101, 77), "just_over.png": (24, 25)}
    for name, (h, w) in sizes.items():
        write_image(rng.integers(0, 120, (h, w, 3), dtype=np.uint8), str(tmp_path / "in" / name))
    status = test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                               "--enhance_checkpoint", str(tmp_path / "weights.pth"), "--tile", "24",
                               "--device", "cpu", "--num_workers", "0", "--writers", "1"])
    assert status in (0, None)
    assert len(windows) == 5 * 4 + 3 * 6 + 1 * 2 and max(max(w) for w in windows) == 46, windows
    model.eval()
    for name in sizes:
        with torch.no_grad():
            whole = to_uint8(model(to_tensor(read_image(tmp_path / "in" / name))[None])[0][0])
        written = read_image(tmp_path / "out" / name)
        assert written.shape == whole.shape
        assert np.abs(written.astype(int) - whole.astype(int)).max() <= 1, name  # one level: float rounding at .5
        assert (written == whole).mean() > 0.999, name


# ---------------------------------------------------------------- command lines of utils and benchmarks

def test_lowlight_modes_from_the_command_line(tmp_path):
    """--mode scale --scale 0.4: floor(x * 0.4) exactly; --mode gamma --gamma 2.2 --noise_std 0:
    floor((x / 255)^2.2 * 255) exactly; and a drawn scale stays within [0.35, 0.45] (one factor per image)."""
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None].repeat(3, 2)
    write_image(image, str(tmp_path / "normal/a/ramp.png"))
    from utils import lowlight
    base = ["--normal_path", str(tmp_path / "normal")]
    _run([sys.executable, "-m", "utils.lowlight", *base, "--underexposed_path", str(tmp_path / "scale"),
          "--mode", "scale", "--scale", "0.4"])  # once as a command; main(argv) is what the command runs
    np.testing.assert_array_equal(read_image(tmp_path / "scale/a/ramp.png"), np.floor(image * 0.4).astype(np.uint8))
    assert lowlight.main(base + ["--underexposed_path", str(tmp_path / "gamma"), "--mode", "gamma", "--gamma", "2.2",
                                 "--noise_std", "0"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "gamma/a/ramp.png"),
                                  np.floor((image / 255.0) ** 2.2 * 255).astype(np.uint8))
    assert lowlight.main(base + ["--underexposed_path", str(tmp_path / "drawn"), "--mode", "scale", "--seed", "7"]) == 0
    drawn = read_image(tmp_path / "drawn/a/ramp.png")[..., 0].ravel()
    x = np.arange(1, 256)  # floor(x f) = d for every x: f in [d / x, (d + 1) / x) for all x at once
    low, high = (drawn[1:] / x).max(), ((drawn[1:] + 1.0) / x).min()
    assert drawn[0] == 0 and low < high and 0.35 <= high and low < 0.45, (low, high)


def test_face_photos_from_the_command_line(tmp_path):
    out = _run([sys.executable, "-m", "utils.face_photos", str(tmp_path / "faces")])
    folders = sorted(os.listdir(tmp_path / "faces"))
    assert folders == IDENTITIES
    files = [f for d in folders for f in sorted(os.listdir(tmp_path / "faces" / d))]
    assert all(f.startswith(f.rsplit("_", 1)[0]) and f.endswith(".jpg") for f in files)
    assert f"wrote {len(files)} face photos into {tmp_path / 'faces'}" in out
    assert read_image(tmp_path / "faces" / folders[0] / files[0]).shape == (250, 250, 3)


def test_benchmark_repeat_and_test_batch(monkeypatch):
    """--repeat N times each measurement N times (after --quick too, which otherwise times once); --test_batch B adds
    the network timed in batches of B, test.py's batch size. The part runs here rather than in its own process, so
    that the timing calls can be counted (each then runs once)."""
    from benchmarks import benchmark
    repeats = []
    real = benchmark.median_seconds
    monkeypatch.setattr(benchmark, "median_seconds", lambda fn, device, repeat: repeats.append(repeat) or
                        real(fn, device, 1))
    args = benchmark.parse_args(["--quick", "--parts", "enhance", "--test_batch", "3", "--repeat", "2"])
    assert benchmark.parse_args(["--quick"]).repeat == 1 and benchmark.parse_args([]).repeat == 5
    results = benchmark.run_part("enhance", args)
    assert "error" not in results, results
    assert repeats == [2, 9, 2, 9, 2, 9]  # each size, then the convolution ceiling beside it (at least 9 calls)
    batched = results["128x128 in batches of 3"]
    assert batched["images_per_s"] == pytest.approx(3 / batched["seconds"], rel=1e-9)


def test_resume_from_a_bare_epoch_never_replaces_a_better_best(train_args, two_images, tmp_path, monkeypatch):
    """A bare epochN.pth carries no validation score: resuming from it into a folder whose best.pth is better keeps
    that best.pth (its score comes from the resume.pth beside it), and without that record the run refuses in one
    line rather than replace the best weights with worse."""
    scores = iter([22.0, 20.0])  # the first run's epoch 0, then the resumed run's epoch 1: worse

    def scripted(self, model, device, precision="tf32", preview_images=4, **kwargs):
        return dict(psnr=next(scores), ssim=0.5, brightness=0.5, face_acc=0.5, no_face=0, images=2), None

    monkeypatch.setattr(Validation, "__call__", scripted)
    run = ("--dataset_root", str(two_images), "--batch_size", "2", "--crop_size", "32", "--val_dataset", "LaPa-Face",
           "--best_metric", "psnr", "--preview_images", "0")
    train.main(train_args(*run, "--epoch_num", "1"))
    best = _weights(tmp_path / "ckpt/best.pth")
    resume = (*run, "--epoch_num", "2", "--start_epoch", "1", "--resume", "--resume_checkpoint",
              str(tmp_path / "ckpt/epoch0.pth"))
    train.main(train_args(*resume))
    _same_weights(_weights(tmp_path / "ckpt/best.pth"), best)
    assert "best.pth holds epoch 0 (psnr 22.0000" in (tmp_path / "log/train.txt").read_text().splitlines()[-2]
    os.remove(tmp_path / "ckpt/resume.pth")
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(*resume))
    assert "best.pth: the best weights of an earlier run" in str(stop.value.code)
    _same_weights(_weights(tmp_path / "ckpt/best.pth"), best)
