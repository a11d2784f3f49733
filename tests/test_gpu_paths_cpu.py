"""What the CUDA paths rely on, checked on the CPU: the deterministic face crops (CUDA's deterministic mode refuses
grid_sample's and interpolate's backwards), the face path's backward memory growing linearly with the batch, the
cross-entropy without nll_loss, the benchmark's out-of-memory test, the layout on CUDA, the training-file check
shared among torchrun's processes, and test.py forking its writers before the device starts. On a GPU,
tests/test_cuda.py runs the same paths on the device itself."""
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import test as test_script
from benchmarks import benchmark
from nets.enhance import training_layout
from nets.face_recognition import FaceRecognitionLoss, align_faces
from utils.data import TrainSet
from utils.face_database import identity_of
from utils.images import list_images


def _face_rows(dtype=torch.float64):
    """Detection rows of four faces on a 90x120 image: tilted, small (upscaled to 160), whole image, past the border."""
    rows = []
    for (x1, y1, x2, y2), (dx, dy) in zip([(10.7, 5.2, 70.9, 80.1), (40.0, 30.5, 60.3, 44.8), (0.0, 0.0, 119.9, 89.9),
                                          (95.3, 60.6, 140.0, 101.2)], [(20, -7), (-9, 3), (15, 0.0), (12, 11)]):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        rows.append(torch.tensor([x1, y1, x2, y2, 0.9, cx - dx / 2, cy - dy / 2, cx + dx / 2, cy + dy / 2] + [cx] * 6,
                                 dtype=dtype))
    return rows


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_deterministic_face_crops_give_the_torchvision_crops_and_gradients(dtype, tolerance):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 90, 120, generator=gen, dtype=dtype)
    rows = _face_rows()
    exact, gathered = images.clone().requires_grad_(), images.clone().requires_grad_()
    expected, found = align_faces(exact, rows, deterministic=False)
    got, found_too = align_faces(gathered, rows, deterministic=True)
    assert found == found_too == [0, 1, 2, 3] and got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
    weights = torch.rand(expected.shape, generator=gen, dtype=dtype)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    scale = exact.grad.abs().max().item()
    torch.testing.assert_close(gathered.grad, exact.grad, rtol=0, atol=tolerance * scale)


def test_face_crops_take_the_deterministic_path_only_on_cuda_in_deterministic_mode(monkeypatch):
    import nets.face_recognition as face_recognition
    used = []
    monkeypatch.setattr(face_recognition, "_sample_bilinear", lambda *a: used.append(1) or F.grid_sample(
        a[0], a[1], "bilinear", "zeros", align_corners=False))
    images = torch.rand(1, 3, 90, 120)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        align_faces(images, _face_rows()[:1])  # the CPU's backward is deterministic: torchvision's path
    finally:
        torch.use_deterministic_algorithms(previous)
    assert used == []
    align_faces(images, _face_rows()[:1], deterministic=True)
    assert used == [1]


def _face_backward_bytes(batch, size=128):
    """Bytes allocated (torch.profiler's memory events) by the backward of the face crops of `batch` images."""
    images = torch.rand(batch, 3, size, size, requires_grad=True)
    row = torch.tensor([20.3, 15.2, 90.9, 100.1, 0.9, 40, 50, 70, 52] + [55.0] * 6, dtype=torch.float64)
    faces, found = align_faces(images, [row] * batch)
    assert found == list(range(batch))
    loss = faces.sum()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)


def test_the_face_path_backward_allocates_linearly_with_the_batch():
    """A crop sliced as images[i:i+1] made its backward allocate a whole BxCxHxW gradient per face (7.5x from batch
    2 to 8 at this size); cut from images.unbind(0), one in all (4x)."""
    two, eight = _face_backward_bytes(2), _face_backward_bytes(8)
    assert two > 3 * 128 * 128 * 4 * 2  # at least the images' gradient
    assert eight / two <= 4.2, (two, eight)


def test_the_face_loss_is_the_cross_entropy_of_the_logits():
    gen = torch.Generator().manual_seed(0)
    face_loss = FaceRecognitionLoss(None, None, F.normalize(torch.randn(7, 128, generator=gen), dim=1))
    embeddings = torch.randn(3, 128, generator=gen, requires_grad=True)
    labels = torch.tensor([4, 0, 6, 2])
    loss, logits, found = face_loss.loss(embeddings, [0, 2, 3], labels)
    assert found.tolist() == [True, False, True, True]
    assert torch.equal(loss, F.cross_entropy(logits, labels, reduction="none").sum() / 4)
    small, _, _ = face_loss.loss(embeddings, [0, 2, 3], labels.to(torch.int16))  # labels of a smaller type
    assert torch.equal(small, loss)


def test_out_of_memory_is_recognised_also_where_it_arrives_wrapped():
    from torch._dynamo.exc import BackendCompilerFailed
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert benchmark.out_of_memory(oom)
    assert benchmark.out_of_memory(BackendCompilerFailed(lambda: None, oom, None))
    try:  # raised from an error whose message does not say it
        try:
            raise oom
        except torch.OutOfMemoryError as e:
            raise ValueError("compiling failed") from e
    except ValueError as e:
        assert benchmark.out_of_memory(e)
    assert benchmark.out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert benchmark.out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not benchmark.out_of_memory(RuntimeError("shapes cannot be multiplied"))
    assert not benchmark.out_of_memory(ValueError("out of memory"))  # not an error of the device


def test_memory_format_auto_is_channels_last_on_cuda_without_timing(monkeypatch):
    monkeypatch.setattr(torch, "rand", lambda *a, **k: pytest.fail("timed a step"))
    assert training_layout(torch.device("cuda"), amp=True) == torch.channels_last


def test_torchrun_processes_share_the_training_file_check(tiny_dataset, tmp_path):
    root = tmp_path / "LaPa-Face"
    shutil.copytree(tiny_dataset / "LaPa-Face", root)
    files = list_images(root / "underexposed")[0]
    (root / "underexposed" / files[1]).write_bytes(b"not a jpeg")
    (root / "seg" / (files[4].rsplit(".", 1)[0] + ".png")).write_bytes(b"")
    names = sorted({identity_of(f) for f in files})
    train_set = TrainSet(str(root), names, 32, str(tiny_dataset / "Contrast/high"), str(tiny_dataset / "Contrast/low"))
    whole = train_set.unreadable()
    assert len(whole) == 2 and files[1] in whole[0] and files[4].rsplit(".", 1)[0] in whole[1]
    for parts in (2, 3):
        shares = [train_set.unreadable(part, parts) for part in range(parts)]
        assert sorted(m for share in shares for m in share) == sorted(whole)


def test_test_py_forks_its_writers_before_the_device_starts(tmp_path, monkeypatch):
    from nets.enhance import EnhanceNet
    from utils.images import write_image
    import numpy as np
    torch.save(EnhanceNet().state_dict(), tmp_path / "w.pth")
    write_image(np.full((20, 24, 3), 40, np.uint8), str(tmp_path / "in" / "a.png"))
    order = []
    for name in ("writer_pool", "start_device"):
        original = getattr(test_script, name)
        monkeypatch.setattr(test_script, name, lambda *a, _f=original, _n=name: order.append(_n) or _f(*a))
    assert test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                             "--enhance_checkpoint", str(tmp_path / "w.pth"), "--device", "cpu", "--writers", "1"]) == 0
    assert order == ["writer_pool", "start_device"] and (tmp_path / "out" / "a.png").is_file()


def test_the_benchmark_measures_the_loader_with_train_py_default_workers(tmp_path):
    import train
    args = benchmark.parse_args(["--quick"])
    figures = benchmark.part_loader(args, torch.device("cpu"), str(tmp_path))
    assert figures["workers"] == train.parse_args([]).num_workers and figures["items"] == 16
    assert figures["items_per_s"] == pytest.approx(16 / figures["seconds"])
    rows = benchmark.table({"loader": {**figures, "peak_rss_gib": 1.0}})
    assert rows[0][:3] == ("loader", f"train.py's loader, {figures['workers']} workers",
                           f"{figures['items_per_s']:.1f} items/s")


def test_the_full_gpu_table_has_every_batch_precision_and_mode():
    args = benchmark.parse_args(["--full"])
    parts = benchmark.all_parts(args)
    for precision in ("fp32", "tf32", "bf16"):
        for mode, compiled in (("eager", False), ("compiled", True)):
            for batch in (2, 32, 64):
                function, settings, size = parts[f"train {precision} {mode} batch {batch}"]
                assert (function, settings, size) == (benchmark.part_train_batch,
                                                      {"precision": precision, "compile": compiled}, batch)
            assert parts[f"train {precision} {mode} largest"][2] == 128  # searched from 128 on
    assert {"test_py", "enhance", "eval_py", "loader", "bf16_peak", "train"} <= set(parts)
    assert "train_largest" not in parts  # each setting has its own


def test_training_items_travel_as_uint8_and_resize_on_the_device_as_published(tiny_dataset):
    """The published loader resized each float image (bilinear, antialias) and int64 map (nearest) in the worker."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms.functional import resize
    from utils.data import collate_training, training_batch
    from utils.images import read_image, to_tensor
    root = tiny_dataset / "LaPa-Face"
    files = list_images(root / "underexposed")[0]
    train_set = TrainSet(str(root), sorted({identity_of(f) for f in files}), 100, str(tiny_dataset / "Contrast/high"),
                         str(tiny_dataset / "Contrast/low"))
    items = [train_set[i] for i in (0, 3, 4)]
    assert items[0][0].dtype == items[0][1].dtype == torch.uint8  # 250x250x3 + 250x250 bytes, not 5 float maps
    items[1] = (torch.from_numpy(read_image(str(root / "underexposed" / files[3]))[:201, :187].copy()),
                items[1][1][:201, :187].clone(), *items[1][2:])  # another size in the same batch
    low, seg, identities, pos, neg = training_batch(collate_training(items), 100, torch.device("cpu"))
    assert low.shape == pos.shape == neg.shape == (3, 3, 100, 100) and seg.shape == (3, 100, 100)
    assert seg.dtype == identities.dtype == torch.int64 and identities.tolist() == [it[2] for it in items]
    for k, (image, labels) in enumerate((it[0], it[1]) for it in items):
        expected = resize(to_tensor(image.numpy()), [100, 100], antialias=True).clamp_(0, 1)
        assert torch.equal(low[k], expected), k
        expected_labels = F.interpolate(labels.long()[None, None].float(), size=(100, 100), mode="nearest")[0, 0]
        assert torch.equal(seg[k], expected_labels.long()), k
    stem = files[0].rsplit(".", 1)[0]
    with Image.open(root / "seg" / f"{stem}.png") as im:
        assert torch.equal(items[0][1], torch.from_numpy(np.array(im)))


def test_the_objective_sums_over_the_global_batch_in_eight_collectives(retinaface_weights, facenet_file, vgg_file,
                                                                       monkeypatch):
    """Under torchrun each global_sum is an all-reduce (and one more in the backward where gradient flows): the
    means of a term travel stacked, 8 forward instead of 37."""
    import nets.losses as losses
    from nets.enhance import EnhanceNet
    from nets.facenet import load_facenet
    from nets.retinaface import load_retinaface
    from nets.vgg import load_vgg16
    calls = []
    monkeypatch.setattr(losses, "global_sum", lambda x: calls.append(x.requires_grad) or x)
    gen = torch.Generator().manual_seed(0)
    database = F.normalize(torch.randn(5, 128, generator=gen), dim=1)
    objective = losses.LowFaceNetObjective(load_vgg16(vgg_file), FaceRecognitionLoss(
        load_retinaface(retinaface_weights), load_facenet(facenet_file), database))
    low = torch.rand(2, 3, 64, 64, generator=gen) * 0.3
    enhanced, illumination = EnhanceNet()(low)
    total, terms, _ = objective(enhanced, illumination, low, torch.rand(2, 3, 64, 64, generator=gen),
                                torch.rand(2, 3, 64, 64, generator=gen) * 0.3,
                                torch.randint(0, 11, (2, 64, 64), generator=gen), torch.tensor([0, 3]))
    # the segmentation loss's class statistics carry no gradient, nor does the face loss where no face is found
    assert len(calls) == 8 and sum(calls) == 6
    assert set(terms) == set(losses.WEIGHTS) and torch.isfinite(total)


def test_test_py_flushes_each_output_to_disk_only_with_fsync(tmp_path, monkeypatch):
    import os
    import numpy as np
    from nets.enhance import EnhanceNet
    from utils.images import write_image
    torch.save(EnhanceNet().state_dict(), tmp_path / "w.pth")
    for name in ("a.png", "b.jpg"):
        write_image(np.full((20, 24, 3), 40, np.uint8), str(tmp_path / "in" / name))
    monkeypatch.setattr(test_script.multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # writer threads
    flushed, fsync = [], os.fsync  # the images' temporary files (the folder's record, .made_by.json, is flushed)
    monkeypatch.setattr(os, "fsync", lambda fd: flushed.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    for extra, out in (([], "plain"), (["--fsync"], "flushed")):
        flushed.clear()
        assert test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / out),
                                 "--enhance_checkpoint", str(tmp_path / "w.pth"), "--device", "cpu", *extra]) == 0
        assert sorted(os.listdir(tmp_path / out)) == [".made_by.json", "a.png", "b.jpg"]
        images = [path for path in flushed if os.path.basename(path).startswith(".tmp-test-")]
        assert len(images) == (2 if extra else 0), (extra, flushed)


def test_the_full_gpu_table_is_refused_on_a_cpu_in_one_line():
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--full", "--device", "cpu"])
    assert str(stop.value.code).startswith("error: --full measures a GPU's table")


def test_persistent_loader_workers_draw_each_epoch_as_fresh_ones_would(train_args, tmp_path, monkeypatch):
    """train.py's loader workers start once and persist across epochs; each key carries its epoch, so two epochs
    with a worker reach the weights of two epochs without one (a worker that kept its first epoch's copy of
    TrainSet.epoch would draw other contrastive images in the second)."""
    import train
    loaders = []

    def loader(*args, **kwargs):
        loaders.append(kwargs["persistent_workers"])
        return torch.utils.data.DataLoader(*args, **kwargs)

    monkeypatch.setattr(train, "DataLoader", loader)
    flags = ("--crop_size", "32", "--batch_size", "2", "--epoch_num", "2", "--deterministic")
    for workers in ("0", "1"):
        train.main(train_args(*flags, "--num_workers", workers, "--log_path", str(tmp_path / workers / "train.txt"),
                              ckpt=f"ckpt{workers}"))
    assert loaders == [False, True]  # one loader per run, whose one worker serves both epochs
    weights = [torch.load(tmp_path / f"ckpt{w}/epoch1.pth", weights_only=True) for w in "01"]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0, msg=key)
