"""End to end: train.py on a tiny data set with the published layout, resume, and test.py on its checkpoint."""
import os

import numpy as np
import pytest
import torch

import nets
import test as test_script
from conftest import IDENTITIES
import train
from nets.enhance import EnhanceNet, init_weights
from nets.face_recognition import FaceRecognitionLoss
from nets.facenet import load_facenet
from nets.losses import WEIGHTS, LowFaceNetObjective
from nets.retinaface import load_retinaface
from nets.vgg import load_vgg16
from utils.data import TrainSet, collate_training, training_batch
from utils.face_database import load_encodings
from utils.images import read_image, to_tensor, to_uint8, write_image


def test_one_epoch_writes_loadable_checkpoints_and_readable_log(train_args, tmp_path):
    train.main(train_args("--epoch_num", "1", "--log_every", "1", "--memory_format", "auto"))
    model = nets.load("enhance", tmp_path / "ckpt/epoch0.pth")  # a bare state dict, as test.py loads it
    assert isinstance(model, EnhanceNet)
    resume = torch.load(tmp_path / "ckpt/resume.pth", weights_only=True)
    assert (resume["epoch"], resume["batch"]) == (1, 0)
    assert set(resume) >= {"model", "optimizer", "epoch", "batch", "rng"}
    log = (tmp_path / "log/train.txt").read_text().splitlines()
    assert log[0].startswith("training on cpu: 6 images") and log[0].endswith(("contiguous_format", "channels_last"))
    steps = [line for line in log if line.startswith("epoch 0 iter")]
    assert len(steps) == 3  # 6 images, batch 2, a line per iteration
    for name in ["loss", "face_acc", "brightness", *WEIGHTS]:
        assert f" {name} " in steps[0], f"{name} missing from the log line"
    assert sorted(os.listdir(tmp_path / "database/LaPa-Face")) == \
        [".face_database.json"] + [f"{name}_0001.jpg" for name in IDENTITIES[:3]]
    assert (tmp_path / "encoding/LaPa-Face_encoding.npy").exists()


def test_resume_gives_the_same_next_step(train_args, tmp_path):
    layout = ("--memory_format", "channels_last")
    train.main(train_args("--max_iters", "2", *layout, ckpt="straight"))
    log = ("--log_path", str(tmp_path / "stopped-log/train.txt"))  # a run of its own: its own TensorBoard curves
    train.main(train_args("--max_iters", "1", *layout, *log, ckpt="stopped"))
    train.main(train_args("--max_iters", "1", "--resume", *layout, *log, ckpt="stopped"))
    straight = torch.load(tmp_path / "straight/resume.pth", weights_only=True)
    resumed = torch.load(tmp_path / "stopped/resume.pth", weights_only=True)
    assert (resumed["epoch"], resumed["batch"]) == (straight["epoch"], straight["batch"]) == (0, 2)
    assert all(v.is_contiguous() for v in straight["model"].values())  # NCHW on disk, as published
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=1e-6, msg=k)


@pytest.fixture
def fixed_batch(tiny_dataset, tmp_path, facenet_file, retinaface_weights, vgg_file):
    """(objective with every term, one training batch of 2 at 128x128)."""
    detector = load_retinaface(retinaface_weights)
    facenet = load_facenet(facenet_file)
    face_set = tiny_dataset / "LaPa-Face"
    encodings, names = load_encodings(str(face_set / "normal"), str(tmp_path / "db"), str(tmp_path / "enc"),
                                      "LaPa-Face", detector, facenet, "cpu")
    data = TrainSet(str(face_set), names, 128, str(tiny_dataset / "Contrast/high"), str(tiny_dataset / "Contrast/low"))
    objective = LowFaceNetObjective(load_vgg16(vgg_file), FaceRecognitionLoss(detector, facenet, encodings))
    return objective, training_batch(collate_training([data[0], data[3]]), 128, torch.device("cpu"))


def test_objective_decreases_on_a_fixed_batch(fixed_batch):
    objective, (low, seg, labels, pos, neg) = fixed_batch
    torch.manual_seed(1)
    model = init_weights(EnhanceNet())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    history = []
    for _ in range(8):
        total, terms, logits = objective(*model(low), low, pos, neg, seg, labels)
        assert set(terms) == set(WEIGHTS) and logits.shape == (2, 3)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(total.item())
    assert all(later < earlier for earlier, later in zip(history, history[1:])), history  # every step lowers it


def test_objective_under_bf16_autocast_stays_within_2_percent(fixed_batch):
    objective, (low, seg, labels, pos, neg) = fixed_batch
    torch.manual_seed(1)
    model = init_weights(EnhanceNet())
    with torch.no_grad():
        full, full_terms, _ = objective(*model(low), low, pos, neg, seg, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            enhanced, illumination = model(low)
            assert objective.vgg(enhanced, 1)[0].dtype == torch.bfloat16  # autocast is really on
            half, half_terms, _ = objective(enhanced, illumination, low, pos, neg, seg, labels)
    assert half.dtype == torch.float32
    assert abs(half.item() - full.item()) <= 0.02 * abs(full.item()), (half.item(), full.item())


@pytest.mark.parametrize("amp", [False, True])
def test_test_py_matches_a_direct_network_call(tmp_path, amp):
    torch.manual_seed(0)
    model = init_weights(EnhanceNet()).eval()
    torch.save(model.state_dict(), tmp_path / "epoch0.pth")
    rng = np.random.default_rng(0)
    images = {"a.png": (40, 56), "b.png": (40, 56), "id/c.png": (33, 71)}  # two of one size: batched together
    for rel, (h, w) in images.items():
        write_image((rng.random((h, w, 3)) * 90).astype(np.uint8), str(tmp_path / "in" / rel))
    code = test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                             "--enhance_checkpoint", str(tmp_path / "epoch0.pth"), "--device", "cpu",
                             "--batch_size", "3", "--num_workers", "0"] + (["--amp"] if amp else []))
    assert code == 0
    for rel in images:
        x = to_tensor(read_image(str(tmp_path / "in" / rel)))[None]
        with torch.no_grad():
            expected = to_uint8(model(x)[0][0])
        out = read_image(str(tmp_path / "out" / rel))
        if amp:  # bf16 autocast is on (pixels move) and stays within a few levels (1 here, 0.07 on average)
            diff = np.abs(out.astype(int) - expected)
            assert 0 < diff.max() <= 4 and diff.mean() <= 0.5, (rel, diff.max(), diff.mean())
        else:
            np.testing.assert_array_equal(out, expected, err_msg=rel)


def test_comparison_pictures_put_input_enhanced_and_normal_side_by_side(tmp_path):
    torch.manual_seed(0)
    model = init_weights(EnhanceNet()).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    rng = np.random.default_rng(1)
    normal = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    write_image(normal, str(tmp_path / "set/normal/x.png"))
    write_image(normal // 4, str(tmp_path / "set/underexposed/x.png"))
    write_image(normal // 4, str(tmp_path / "set/underexposed/y.png"))  # no normal image: two panels
    assert test_script.main(["--underexposed_path", str(tmp_path / "set/underexposed"), "--enhanced_path",
                             str(tmp_path / "out"), "--enhance_checkpoint", str(tmp_path / "w.pth"), "--device", "cpu",
                             "--num_workers", "0", "--comparison_path", str(tmp_path / "cmp")]) == 0
    picture = read_image(str(tmp_path / "cmp/x.png"))
    assert picture.shape == (30, 3 * 40 + 2 * 4, 3)
    np.testing.assert_array_equal(picture[:, :40], normal // 4)
    np.testing.assert_array_equal(picture[:, 44:84], read_image(str(tmp_path / "out/x.png")))
    np.testing.assert_array_equal(picture[:, 88:], normal)
    assert read_image(str(tmp_path / "cmp/y.png")).shape == (30, 2 * 40 + 4, 3)
