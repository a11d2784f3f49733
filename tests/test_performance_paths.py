"""The fast paths compute the same thing: tiled inference, one detector and FaceNet call per batch, each image's
VGG trunk once, nothing built inside the training step. (Speed itself is measured by benchmarks/benchmark.py.)"""
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from nets.enhance import RECEPTIVE_RADIUS, EnhanceNet, enhance, init_weights, training_layout
from nets.face_recognition import FaceRecognitionLoss
from nets.facenet import load_facenet
from nets.losses import LowFaceNetObjective
from nets.retinaface import load_retinaface
from nets.vgg import load_vgg16
from utils.data import read_ahead
from utils.images import read_image, to_tensor

ROOT = Path(__file__).resolve().parents[1]


def test_tiled_enhancement_equals_the_whole_image_result():
    torch.manual_seed(0)
    model = init_weights(EnhanceNet(), std=0.06).eval()  # weights under which a pixel 11 away still matters:
    x = torch.rand(2, 3, 100, 130)
    with torch.no_grad():
        whole = model(x)[0]
        cut = lambda margin: (model(x[..., :48 + margin])[0][..., :48] - whole[..., :48]).abs().max().item()
        assert cut(RECEPTIVE_RADIUS - 1) > 1e-5 >= cut(RECEPTIVE_RADIUS)  # a halo of 10 would not do
    tiled = enhance(model, x, tile=48, halo=RECEPTIVE_RADIUS)  # 48 divides neither side: uneven edge tiles
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() <= 1e-5
    x = x[..., :55, :]  # taller than a tile, shorter than a window: the window is the image's height
    with torch.no_grad():
        assert (enhance(model, x, tile=48) - model(x)[0]).abs().max().item() <= 1e-5


def test_enhancement_inference_in_channels_last_equals_the_published_layout():
    torch.manual_seed(0)
    model = EnhanceNet().eval()
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(x)[0]
    assert (enhance(model, x) - expected).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def objective_and_batch(retinaface_weights, facenet_file, vgg_file, face_photos):
    """The full objective (real detector, stand-in FaceNet, VGG) and a batch of 3 faces, 128x128."""
    faces = sorted(p for p in face_photos.rglob("*.jpg"))[:3]
    low = torch.stack([to_tensor(read_image(str(p))) for p in faces])
    low = torch.nn.functional.interpolate(low, size=(128, 128), mode="bilinear", antialias=True).clamp(0, 1) * 0.4
    database = torch.nn.functional.normalize(torch.randn(5, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    face_loss = FaceRecognitionLoss(load_retinaface(retinaface_weights), load_facenet(facenet_file), database)
    objective = LowFaceNetObjective(load_vgg16(vgg_file), face_loss)
    rng = np.random.default_rng(0)
    batch = (low, torch.from_numpy(rng.integers(0, 11, (3, 128, 128))), torch.tensor([0, 1, 2]),
             torch.rand(3, 3, 128, 128), torch.rand(3, 3, 128, 128) * 0.3)
    return objective, batch


def _calls(monkeypatch, obj, name):
    """Record the first argument of every call of obj.name (a list that fills as the calls come)."""
    calls, original = [], getattr(obj, name)

    def counted(x, *args, **kwargs):
        calls.append(x)
        return original(x, *args, **kwargs)
    monkeypatch.setattr(obj, name, counted)
    return calls


def test_detector_and_facenet_run_once_per_batch(objective_and_batch, monkeypatch):
    objective, (low, seg, labels, pos, neg) = objective_and_batch
    detections = _calls(monkeypatch, objective.face_loss.detector, "detect")
    embeddings = _calls(monkeypatch, objective.face_loss.facenet, "forward")
    model = EnhanceNet()
    _, _, logits = objective(*model(low), low, pos, neg, seg, labels)
    assert len(detections) == 1 and len(detections[0]) == 3
    assert len(embeddings) == 1 and (logits != 0).any(1).sum().item() == len(embeddings[0]) > 0


def test_each_image_goes_through_the_vgg_trunk_once(objective_and_batch, monkeypatch):
    objective, (low, seg, labels, pos, neg) = objective_and_batch
    vgg = objective.vgg.features
    first = _calls(monkeypatch, vgg[0], "forward")  # conv1_1: every image
    stage4 = _calls(monkeypatch, vgg[17], "forward")  # conv4_1: only what relu4_3 is needed of
    model = EnhanceNet()
    objective(*model(low), low, pos, neg, seg, labels)
    assert sum(len(x) for x in first) == 4 * 3  # enhanced, positives, negatives, input
    assert sum(len(x) for x in stage4) == 2 * 3  # enhanced (perceptual, with gradient) and input


def test_training_step_builds_no_module(objective_and_batch, monkeypatch):
    objective, (low, seg, labels, pos, neg) = objective_and_batch
    model = EnhanceNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    built, original = [], nn.Module.__init__

    def counted(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)
    monkeypatch.setattr(nn.Module, "__init__", counted)
    total, _, _ = objective(*model(low), low, pos, neg, seg, labels)
    optimizer.zero_grad()
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    assert built == []


def test_training_in_channels_last_gives_the_losses_and_gradients_of_nchw(objective_and_batch):
    objective, (low, seg, labels, pos, neg) = objective_and_batch
    torch.manual_seed(0)
    nchw = init_weights(EnhanceNet())
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = EnhanceNet()
        model.load_state_dict(nchw.state_dict())
        model.to(memory_format=layout)
        assert model.e_conv2.weight.is_contiguous(memory_format=layout)
        total, terms, _ = objective(*model(low), low, pos, neg, seg, labels)
        total.backward()
        results.append((terms, {k: p.grad for k, p in model.named_parameters()}))
    (terms, grads), (terms_cl, grads_cl) = results
    for k in terms:
        torch.testing.assert_close(terms_cl[k], terms[k], rtol=1e-4, atol=1e-7, msg=k)
    for k in grads:
        torch.testing.assert_close(grads_cl[k], grads[k], rtol=1e-3, atol=1e-3 * grads[k].abs().max().item(), msg=k)


@pytest.mark.parametrize("slow", [torch.channels_last, torch.contiguous_format])
def test_training_layout_picks_the_layout_that_steps_faster(monkeypatch, slow):
    forward = EnhanceNet.forward

    def slowed(self, x):  # 20 ms more in one layout
        if self.e_conv2.weight.is_contiguous(memory_format=slow):
            time.sleep(0.02)
        return forward(self, x)
    monkeypatch.setattr(EnhanceNet, "forward", slowed)
    fast = torch.contiguous_format if slow == torch.channels_last else torch.channels_last
    assert training_layout(torch.device("cpu"), size=16) == fast


class Reads:
    """Items 0..n-1 that record which were read, and by which thread."""

    def __init__(self, n):
        self.n, self.read, self.threads = n, [], set()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read.append(i)
        self.threads.add(threading.get_ident())
        return i


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_read_ahead_gives_the_batches_in_order_reading_a_bounded_number_ahead(workers):
    items = Reads(23)
    batches = read_ahead(items, 4, workers)
    assert next(batches) == [0, 1, 2, 3]
    assert len(items.read) <= 4 * (2 * workers + 1)  # the batches handed out or queued, no more
    assert list(batches) == [[4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22]]
    assert sorted(items.read) == list(range(23))
    assert (threading.get_ident() in items.threads) == (workers == 0)  # read in the caller's thread only with 0


FAULTS_SCRIPT = """
import resource, sys, torch
from utils.runtime import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for step in range(12):  # as training steps: three 64 MB activations live at once, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16, 1024, 1024); b = a + 1; c = b * 2
    del a, b, c
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, sum(faults[-8:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="keep_freed_memory tunes glibc's allocator (Linux)")
def test_keep_freed_memory_reuses_freed_activations_without_fresh_pages():
    def last_steps_faults(mode):  # page faults of the last eight steps; the heap settles within a few
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], int(out[1])
    pages = 64 * 2 ** 20 // resource.getpagesize()
    assert last_steps_faults("default")[1] >= 8 * 3 * pages  # glibc maps large blocks afresh at every allocation
    took, faults = last_steps_faults("keep")
    assert took == "True" and faults < 8 * pages  # only where the heap reaches a new high-water mark
