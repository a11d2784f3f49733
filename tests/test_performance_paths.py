"""The fast paths compute the same thing: tiled inference, one detector and FaceNet call per batch, each image's
VGG trunk once, nothing built inside the training step; and the GPU paths, whose host syncs are counted on the
CPU (tests/host_syncs.py): one copy to the host per training step, batched detection, crops and conversions that
give the published numbers and files bit for bit, fused Adam, --compile, --precision. (Speed itself is measured
by benchmarks/benchmark.py.)"""
import copy
import os
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
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.ops import nms
from torchvision.transforms import InterpolationMode

import eval as eval_script
import test as test_script
import train
from host_syncs import HostSyncs
from nets.enhance import RECEPTIVE_RADIUS, EnhanceNet, enhance, init_weights, training_layout
from nets.face_recognition import (FaceRecognitionLoss, align_face_numpy, align_faces, cosine_logits, encode_faces,
                                   face_angle)
from nets.facenet import load_facenet
from nets.losses import WEIGHTS, LowFaceNetObjective
from nets.retinaface import biggest_face, decode, decode_landm, load_retinaface
from nets.vgg import load_vgg16
from utils.data import read_ahead
from utils.images import read_image, side_by_side, to_tensor, to_uint8, write_image
from utils.runtime import autocast, set_precision

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
    detections = _calls(monkeypatch, objective.face_loss.detector, "start")  # started before the VGG features
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


# ---------------------------------------------------------------- GPU paths: host syncs, batches, precision

def _published_detect(detector, images):
    """The detector's per-image post-processing before this project batched it (threshold, NMS, back to pixels
    for each image on the device): the reference of the batched path."""
    batch, shapes = detector.preprocess(images)
    with torch.no_grad():
        loc, conf, landms = detector.model(batch)
    dets = torch.cat([decode(loc, detector.priors), conf[..., 1:], decode_landm(landms, detector.priors)], -1)
    out = []
    for d, (h, w) in zip(dets, shapes):
        d = d[d[:, 4] >= detector.confidence]
        out.append(detector._unletterbox(d[nms(d[:, :4], d[:, 4], detector.nms_iou)].double().cpu(), h, w))
    return out


@pytest.mark.parametrize("path", ["list", "tensor"])
def test_detections_come_in_one_copy_per_batch_as_the_per_image_path_found_them(retinaface_weights, face_photos, path):
    images = [read_image(str(p)) for p in sorted(face_photos.rglob("*.jpg"))[:3]]
    images = images + [images[0] * 0]  # a blank image: no face
    if path == "tensor":
        images = torch.stack([torch.from_numpy(i) for i in images]).permute(0, 3, 1, 2).float()
    expected = _published_detect(load_retinaface(retinaface_weights), images)
    assert [len(d) for d in expected][-1] == 0 and min(len(d) for d in expected[:-1]) > 0
    for limit in (2048, 3):  # more candidates than the limit: the image's candidates come in a second copy
        detector = load_retinaface(retinaface_weights, max_candidates=limit)
        with HostSyncs(detector.model, detector.priors, detector.mean, images) as syncs:
            dets = detector.detect(images)
        assert len(dets) == len(expected) and all(torch.equal(d, e) for d, e in zip(dets, expected))
        copies = 1 + (limit == 3) * sum(len(d) > 0 for d in expected)
        assert dict(syncs.count) == {"Tensor.to": copies}


def _published_align_faces(images, det_rows, size=160):
    """align_faces as published (TF.rotate per face): the reference of the sync-free path."""
    faces = []
    for i, row in enumerate(det_rows):
        row = torch.as_tensor(row).double().tolist()
        x1, y1, x2, y2 = (max(0, int(v)) for v in row[:4])
        crop = images[i:i + 1, :, y1:y2, x1:x2]
        h, w = crop.shape[-2:]
        crop = TF.rotate(crop, face_angle(row[5:]), InterpolationMode.BILINEAR, center=[w // 2, h // 2])
        s = min(size / w, size / h)
        nh, nw = int(h * s), int(w * s)
        crop = TF.resize(crop, [nh, nw], InterpolationMode.BILINEAR, antialias=True)
        top, left = (size - nh) // 2, (size - nw) // 2
        faces.append(F.pad(crop, (left, size - nw - left, top, size - nh - top), value=128 / 255))
    return torch.cat(faces)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_face_crops_are_torchvision_rotations_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 90, 120, generator=gen, dtype=dtype)
    rows = []  # x1, y1, x2, y2, score, eyes (left, right), nose, mouth: boxes small and large, one past the border
    for (x1, y1, x2, y2), (dx, dy) in zip([(10.7, 5.2, 70.9, 80.1), (40.0, 30.5, 60.3, 44.8), (0.0, 0.0, 119.9, 89.9),
                                          (95.3, 60.6, 140.0, 101.2)], [(20, -7), (-9, 3), (15, 0.0), (12, 11)]):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        rows.append(torch.tensor([x1, y1, x2, y2, 0.9, cx - dx / 2, cy - dy / 2, cx + dx / 2, cy + dy / 2] + [cx] * 6,
                                 dtype=torch.float64))
    expected_in, got_in = images.clone().requires_grad_(), images.clone().requires_grad_()
    expected = _published_align_faces(expected_in, rows)
    with HostSyncs(got_in) as syncs:
        got, found = align_faces(got_in, rows)
    assert found == [0, 1, 2, 3] and syncs.total() == 0  # TF.rotate uploads 2 tensors per face, each a sync on CUDA
    assert got.dtype == dtype and torch.equal(got, expected)
    weights = torch.rand(expected.shape, generator=gen, dtype=dtype)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert torch.equal(got_in.grad, expected_in.grad)


def _training_step_syncs(objective, batch, steps=2):
    """(HostSyncs of the last of `steps` training steps, then of monitor.read(), the read's results)."""
    torch.manual_seed(0)
    model = init_weights(EnhanceNet())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    monitor = train.StepMonitor(torch.device("cpu"))
    detector = objective.face_loss.detector
    for step in range(steps):  # the first step builds Adam's state
        with HostSyncs(model, objective, detector.model, detector.priors, detector.mean, monitor.found_inf,
                       monitor.first_bad, *batch) as syncs:
            train.train_step(model, objective, optimizer, batch, monitor, iteration=step + 1)
    with HostSyncs(monitor.found_inf, monitor.first_bad, monitor.sums, monitor.correct, monitor.brightness) as reads:
        results = monitor.read()
    return syncs, reads, results


def test_a_training_step_reads_the_device_once_whatever_the_batch_size(objective_and_batch):
    """Before: 28 reads and blocking copies in a step of 2 images, 46 in a step of 4 (9 per image)."""
    objective, batch = objective_and_batch
    for size in (1, 3):
        syncs, reads, (means, faces, images, brightness) = _training_step_syncs(objective, [t[:size] for t in batch])
        assert dict(syncs.count) == {"Tensor.to": 1}, size  # the detections' copy to the host (utils.runtime.to_host)
        assert dict(reads.count) == {"Tensor.to": 1}  # and one copy per log line
        assert images == 2 * size and 0 <= faces <= images and 0 < brightness < 1
        assert set(means) == {"loss", *WEIGHTS} and all(np.isfinite(v) for v in means.values())


def test_a_non_finite_step_and_every_later_one_change_no_weight(objective_and_batch, monkeypatch):
    objective, (low, seg, labels, pos, neg) = objective_and_batch
    torch.manual_seed(0)
    model = init_weights(EnhanceNet())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    monitor = train.StepMonitor(torch.device("cpu"))
    batch = (low, seg, labels, pos, neg)
    train.train_step(model, objective, optimizer, batch, monitor, iteration=1)
    monitor.check()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    image_terms = objective.image_terms
    monkeypatch.setattr(objective, "image_terms", lambda *a: {**image_terms(*a), "color": torch.tensor(float("inf"))})
    train.train_step(model, objective, optimizer, batch, monitor, iteration=2)
    monkeypatch.undo()
    train.train_step(model, objective, optimizer, batch, monitor, iteration=3)  # finite, but after a bad one
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, state[k]) for k, v in optimizer.state_dict()["state"][0].items())  # Adam's step too
    with pytest.raises(train.NonFiniteStep, match="^loss term color became inf at epoch 0 iteration 2$"):
        monitor.read()


def test_fused_adam_steps_as_the_published_adam(objective_and_batch):
    objective, (low, seg, labels, pos, neg) = objective_and_batch
    torch.manual_seed(0)
    start = init_weights(EnhanceNet())
    total, _, _ = objective(*start(low), low, pos, neg, seg, labels)
    grads = torch.autograd.grad(total, list(start.parameters()))
    results = []
    for fused in (False, True):
        model = copy.deepcopy(start)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=fused)
        for _ in range(3):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
        results.append(list(model.parameters()))
    for published, fused in zip(*results):
        torch.testing.assert_close(fused, published, rtol=1e-6, atol=1e-9)


def test_a_resume_point_of_the_unfused_adam_resumes_fused():
    model = EnhanceNet()
    published = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)  # as resume points held it
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    published.step()
    resumed = copy.deepcopy(model)
    optimizer = train.make_optimizer(resumed, train.parse_args([]))
    train.load_optimizer_state(optimizer, copy.deepcopy(published.state_dict()))
    assert optimizer.param_groups[0]["fused"]
    optimizer.found_inf = torch.zeros(())
    for p in resumed.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()  # the fused kernel takes found_inf; the unfused one refuses it
    published.step()
    for p, q in zip(resumed.parameters(), model.parameters()):
        assert optimizer.state[p]["step"].item() == 2
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)


def test_compiled_step_parts_give_the_eager_losses_and_gradients(objective_and_batch):
    objective, (low, seg, labels, pos, neg) = objective_and_batch
    low, seg, pos, neg = (t[:1, ..., :48, :48] for t in (low, seg, pos, neg))  # small: compiling takes seconds a shape
    torch.manual_seed(0)
    start = init_weights(EnhanceNet())
    results = []
    for compiled in (False, True):
        model, parts = copy.deepcopy(start), LowFaceNetObjective(objective.vgg)
        if compiled:
            train.compile_step(model, parts)
        total, terms, _ = parts(*model(low), low, pos, neg, seg)
        total.backward()
        results.append((terms, {k: p.grad for k, p in model.named_parameters()}))
    (terms, grads), (terms_c, grads_c) = results
    for k in terms:
        torch.testing.assert_close(terms_c[k], terms[k], rtol=1e-5, atol=1e-9, msg=k)
    # The L1 terms' gradients are signs of VGG feature differences, some of which lie within float32 rounding of 0
    # and flip with the fused kernels' rounding: compared in norm (measured 0.1 %) and to the largest gradient.
    scale = max(g.abs().max().item() for g in grads.values())
    for k in grads:
        assert (grads_c[k] - grads[k]).norm() <= 1e-2 * grads[k].norm(), k
        torch.testing.assert_close(grads_c[k], grads[k], rtol=0, atol=1e-4 * scale, msg=k)
    assert all(k in model.state_dict() for k in start.state_dict())  # compiled in place: the checkpoint keys stay


@pytest.mark.parametrize("script", ["train", "test", "eval"])
def test_precision_flags_and_the_amp_alias(script):
    parse = {"train": train.parse_args, "test": test_script.parse_args, "eval": eval_script.parse_args}[script]
    assert parse([]).precision == "tf32" and parse(["--amp"]).precision == "bf16"
    assert parse(["--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parse(["--precision", "fp16"])
    for precision, tf32 in (("fp32", False), ("tf32", True), ("bf16", True)):
        set_precision(precision)
        assert torch.backends.cudnn.allow_tf32 == tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert autocast(torch.device("cpu"), "bf16").fast_dtype == torch.bfloat16


def test_test_py_writes_the_bytes_of_the_per_image_path(tmp_path):
    torch.manual_seed(0)
    model = init_weights(EnhanceNet()).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    rng = np.random.default_rng(1)
    sizes = {"a.jpg": (40, 56), "b.png": (40, 56), "c.jpg": (40, 56), "id/d.png": (33, 71), "e.jpg": (40, 56)}
    for rel, (h, w) in sizes.items():
        write_image((rng.random((h, w, 3)) * 90).astype(np.uint8), str(tmp_path / "in" / rel))
        if rel != "e.jpg":
            write_image((rng.random((h, w, 3)) * 255).astype(np.uint8), str(tmp_path / "normal" / rel))
    assert test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                             "--enhance_checkpoint", str(tmp_path / "w.pth"), "--device", "cpu", "--batch_size", "4",
                             "--comparison_path", str(tmp_path / "cmp"), "--writers", "2"]) == 0
    for rel in sizes:  # as the script wrote them before: one image at a time, converted and written alone
        image = read_image(str(tmp_path / "in" / rel))
        with torch.no_grad():
            enhanced = to_uint8(enhance(model, to_tensor(image)[None])[0])
        write_image(enhanced, str(tmp_path / "expected" / rel))
        panels = [image, enhanced] + ([read_image(str(tmp_path / "normal" / rel))] if rel != "e.jpg" else [])
        picture = os.path.splitext(rel)[0] + ".png"
        write_image(side_by_side(panels), str(tmp_path / "expected_cmp" / picture))
        assert (tmp_path / "out" / rel).read_bytes() == (tmp_path / "expected" / rel).read_bytes(), rel
        assert (tmp_path / "cmp" / picture).read_bytes() == (tmp_path / "expected_cmp" / picture).read_bytes(), rel


def test_database_encodings_and_predictions_are_those_of_the_per_image_path(retinaface_weights, facenet_file,
                                                                            face_photos):
    detector, facenet = load_retinaface(retinaface_weights), load_facenet(facenet_file)
    images = [read_image(str(p)) for p in sorted(face_photos.rglob("*.jpg"))[:5]]
    images.insert(2, images[0] * 0)  # no face
    faces, kept = [], []
    for k, dets in enumerate(_published_detect(detector, images)):
        row = biggest_face(dets)
        if row is not None:
            faces.append(align_face_numpy(images[k], row))
            kept.append(k)
    with torch.no_grad():
        expected = facenet(torch.cat(faces)).float()
    with HostSyncs(detector.model, detector.priors, detector.mean, facenet) as syncs:
        encodings, got_kept = encode_faces(images, detector, facenet, "cpu", batch_size=8)
    assert got_kept == kept == [0, 1, 3, 4, 5] and torch.equal(encodings, expected)
    assert dict(syncs.count) == {"Tensor.to": 2}  # the detections and the encodings, one copy each per batch
    database = torch.nn.functional.normalize(torch.randn(7, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    assert torch.equal(cosine_logits(encodings, database).argmax(1), cosine_logits(expected, database).argmax(1))
