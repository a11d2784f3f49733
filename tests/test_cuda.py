"""The CUDA paths on a GPU (every test is skipped on a machine without one; the multi-GPU test without two):

- a training step (train.train_step: all losses, the face loss included) on CUDA in fp32, tf32 and bf16 against the
  CPU's float32 step: the loss terms within a relative 1e-4 / 1e-2 / 3e-2, the gradient of the enhancement network
  within a cosine of 0.9999 / 0.995 / 0.98 and a norm (before clipping) within 0.1 % / 1 % / 5 % (bf16 autocast on
  the CPU: terms within 1.3e-3, cosine 0.9993);
- test.py on CUDA writes the CPU's files: PNG pixels within 1 / 8 / 16 levels of 255 at most and 0.01 / 0.1 / 0.5
  on average in fp32 / tf32 / bf16 (the enhancement network in float32, TF32 convolutions, bf16 autocast);
- train.py --deterministic runs on CUDA, twice to the same weights bit for bit, and a resumed run to the weights of
  a straight one;
- under torch.cuda.set_sync_debug_mode("error") the training step and test.py's loop make the host wait for the
  device only at the one documented copy: the face detections' copy to the host per step (nets.retinaface), the
  enhanced batch's copy per batch (utils.runtime.start_to_host's wait);
- FaceNet's batch padded to the batch size (fixed shapes for cudnn.benchmark) gives the faces' own embeddings;
- on cuda:1 start_to_host waits for the copy on that device, and test.py --device cuda:1 writes cuda:0's files.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import nets
import nets.retinaface
import test as test_script
import train
from nets.enhance import EnhanceNet, init_weights
from nets.face_recognition import FaceRecognitionLoss, align_faces
from nets.facenet import load_facenet
from nets.losses import LowFaceNetObjective
from nets.retinaface import load_retinaface
from nets.vgg import load_vgg16
from utils.images import read_image, to_tensor, write_image
from utils.runtime import set_precision, start_device, start_to_host

from conftest import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda", 0)
TERMS = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 3e-2}  # relative difference of each loss term from the CPU's
GRAD_COSINE = {"fp32": 0.9999, "tf32": 0.995, "bf16": 0.98}
GRAD_NORM = {"fp32": 1e-3, "tf32": 1e-2, "bf16": 5e-2}
PIXELS = {"fp32": (1, 0.01), "tf32": (8, 0.1), "bf16": (16, 0.5)}  # (max, mean) levels of 255
CLIP = torch.nn.utils.clip_grad_norm_


@pytest.fixture(autouse=True)
def default_precision():
    yield
    set_precision("tf32")
    torch.cuda.set_sync_debug_mode(0)


@pytest.fixture(scope="module")
def parts(retinaface_weights, facenet_file, vgg_file, face_photos):
    """A function device -> (objective, batch) on that device: the full objective (published detector, stand-in
    FaceNet, VGG) and a batch of 3 darkened face photos, 128x128."""
    faces = sorted(face_photos.rglob("*.jpg"))[:3]
    low = torch.stack([to_tensor(read_image(str(p))) for p in faces])
    low = torch.nn.functional.interpolate(low, size=(128, 128), mode="bilinear", antialias=True).clamp(0, 1) * 0.4
    database = torch.nn.functional.normalize(torch.randn(5, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    rng = np.random.default_rng(0)
    batch = (low, torch.from_numpy(rng.integers(0, 11, (3, 128, 128))), torch.tensor([0, 1, 2]),
             torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(1)),
             torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 0.3)

    def make(device):
        face_loss = FaceRecognitionLoss(load_retinaface(retinaface_weights, device),
                                        load_facenet(facenet_file, device=device), database)
        objective = LowFaceNetObjective(load_vgg16(vgg_file, device), face_loss).to(device)
        return objective, [t.to(device) for t in batch]
    return make


def _model_and_optimizer(device):
    torch.manual_seed(0)
    model = init_weights(EnhanceNet()).to(device)
    return model, train.make_optimizer(model, train.parse_args([]))


def _step(device, precision, objective, batch, monkeypatch):
    """(loss terms, faces found, gradient, its norm before clipping) of one training step on `device` in
    `precision`."""
    set_precision(precision)
    model, optimizer = _model_and_optimizer(device)
    monitor = train.StepMonitor(device)
    norms = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a: norms.append(CLIP(*a)) or norms[-1])
    _, _, terms, logits = train.train_step(model, objective, optimizer, batch, monitor, precision, 1)
    monitor.check()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters()]).double().cpu()
    return {k: v.item() for k, v in terms.items()}, (logits != 0).any(1).cpu(), gradient, norms[0].item()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_a_training_step_on_cuda_is_the_cpu_step(parts, precision, monkeypatch):
    cpu_terms, cpu_faces, cpu_gradient, cpu_norm = _step(torch.device("cpu"), "fp32", *parts(torch.device("cpu")),
                                                         monkeypatch)
    terms, faces, gradient, norm = _step(CUDA, precision, *parts(CUDA), monkeypatch)
    assert cpu_faces.any() and torch.equal(faces, cpu_faces)  # the same faces found, or the face terms differ
    for name, expected in cpu_terms.items():
        assert terms[name] == pytest.approx(expected, rel=TERMS[precision]), name
    cosine = torch.nn.functional.cosine_similarity(gradient, cpu_gradient, dim=0).item()
    assert cosine >= GRAD_COSINE[precision]
    assert norm == pytest.approx(cpu_norm, rel=GRAD_NORM[precision])


def _images(folder, count=7):
    """Low-light PNGs of a few sizes: batches of one size and of several, one image larger than the tile."""
    rng = np.random.default_rng(3)
    sizes = [(64, 80)] * 4 + [(37, 53), (150, 131), (64, 80)][:count - 4]
    for k, (h, w) in enumerate(sizes):
        write_image((rng.random((h, w, 3)) * 80).astype(np.uint8), str(folder / f"img{k}.png"))


def _test_py(tmp_path, out, device, precision="tf32", *extra):
    return test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / out),
                             "--enhance_checkpoint", str(tmp_path / "w.pth"), "--device", device, "--precision",
                             precision, "--batch_size", "4", "--tile", "128", "--writers", "2", *extra])


@pytest.fixture
def test_py_folder(tmp_path):
    torch.manual_seed(0)
    torch.save(init_weights(EnhanceNet()).state_dict(), tmp_path / "w.pth")
    _images(tmp_path / "in")
    assert _test_py(tmp_path, "cpu", "cpu") == 0
    return tmp_path


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_test_py_on_cuda_writes_the_cpu_files(test_py_folder, precision):
    tmp_path = test_py_folder
    assert _test_py(tmp_path, precision, "cuda", precision) == 0
    most, mean = PIXELS[precision]
    for path in sorted((tmp_path / "cpu").iterdir()):
        expected, got = read_image(str(path)).astype(int), read_image(str(tmp_path / precision / path.name)).astype(int)
        assert got.shape == expected.shape, path.name
        difference = np.abs(got - expected)
        assert difference.max() <= most and difference.mean() <= mean, (path.name, difference.max(), difference.mean())


def _train(train_args, ckpt, *extra):
    """train.py in a process of its own (CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts) on cuda:0."""
    done = subprocess.run([sys.executable, "train.py", *train_args("--crop_size", "64", "--batch_size", "2",
                                                                   "--epoch_num", "1", "--save_every", "1",
                                                                   "--deterministic", "--device", "cuda", *extra,
                                                                   ckpt=ckpt)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_deterministic_training_on_cuda_repeats_and_resumes_to_the_same_weights(train_args, tmp_path):
    _train(train_args, "first", "--max_iters", "2")
    _train(train_args, "second", "--max_iters", "2")
    _train(train_args, "resumed", "--max_iters", "1")
    assert "resumed from" in _train(train_args, "resumed", "--max_iters", "1", "--resume")
    first, second, resumed = (torch.load(tmp_path / name / "resume.pth", weights_only=True)
                              for name in ("first", "second", "resumed"))
    assert first["batch"] == second["batch"] == resumed["batch"] == 2
    for key, value in first["model"].items():
        assert torch.equal(second["model"][key], value), key
        assert torch.equal(resumed["model"][key], value), key


def _allowing_the_host_to_wait(fn, calls):
    """fn with the sync debug mode off while it runs (counted in `calls`): the documented copy."""
    def allowed(*args, **kwargs):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append(fn.__name__)
            torch.cuda.set_sync_debug_mode("error")
    return allowed


def test_a_training_step_waits_for_the_device_only_for_the_detections(parts, monkeypatch):
    objective, batch = parts(CUDA)
    model, optimizer = _model_and_optimizer(CUDA)
    monitor = train.StepMonitor(CUDA)
    train.train_step(model, objective, optimizer, batch, monitor, "bf16", 1)  # Adam's state, cuDNN's plans
    torch.cuda.synchronize()
    copies = []

    def start(tensor):  # the detections' copy, started before the VGG features, waited for after the image terms
        host, wait = start_to_host(tensor)
        return host, _allowing_the_host_to_wait(wait, copies)
    monkeypatch.setattr(nets.retinaface, "start_to_host", start)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for iteration in (2, 3):
            train.train_step(model, objective, optimizer, batch, monitor, "bf16", iteration)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(copies) == 2  # one per step
    monitor.check()


def test_test_py_loop_waits_for_the_device_only_for_each_batch_copy(test_py_folder, monkeypatch):
    tmp_path = test_py_folder
    model = nets.load("enhance", str(tmp_path / "w.pth"), CUDA)  # loading copies pageable weights: a wait
    monkeypatch.setattr(test_script.nets, "load", lambda *args, **kwargs: model)
    waits = []

    def start(tensor):
        host, wait = start_to_host(tensor)
        return host, _allowing_the_host_to_wait(wait, waits)
    monkeypatch.setattr(test_script, "start_to_host", start)
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert _test_py(tmp_path, "synced", "cuda:0") == 0
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(waits) == 4  # one per size in a batch: img0-3 (64x80) together, then img4, img5 (tiled), img6
    assert sorted(os.listdir(tmp_path / "synced")) == sorted(os.listdir(tmp_path / "cpu"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_on_cuda_1_the_host_reads_the_copy_after_it_ends(test_py_folder):
    assert start_device("cuda:1", "fp32") == torch.device("cuda", 1) and torch.cuda.current_device() == 1
    torch.cuda.set_device(0)  # the mismatch the copy must survive: current device 0, tensor on 1
    try:
        x = torch.randn(4096, 4096, device="cuda:1")
        for _ in range(20):  # keep cuda:1 busy well after the copy is queued
            x = torch.tanh(x @ x / 64)
        expected = x.sum(0)
        host, wait = start_to_host(expected)
        wait()
        assert torch.equal(host, expected.cpu())
        tmp_path = test_py_folder
        assert _test_py(tmp_path, "cuda0", "cuda:0", "fp32") == 0 and _test_py(tmp_path, "cuda1", "cuda:1", "fp32") == 0
        for path in sorted((tmp_path / "cuda0").iterdir()):
            assert path.read_bytes() == (tmp_path / "cuda1" / path.name).read_bytes(), path.name
    finally:
        torch.cuda.set_device(0)


def test_facenet_padded_to_the_batch_gives_the_embeddings_of_the_faces_alone(parts):
    objective, (low, *_) = parts(CUDA)
    face = objective.face_loss
    rows = face.detect(low)
    rows[1] = None  # an image without a face: FaceNet's batch is padded to 3 with a blank face
    with torch.no_grad():
        embeddings, found = face.embed(low, rows)
        faces, _ = align_faces(low, rows)
        alone = face.facenet(faces)
    assert found == [0, 2] and embeddings.shape == alone.shape == (2, 128)
    torch.testing.assert_close(embeddings, alone, rtol=0, atol=1e-5)
