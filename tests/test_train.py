"""End to end: train.py on a tiny data set with the published layout, resume, and test.py on its checkpoint."""
import os
import shutil

import numpy as np
import pytest
import torch

import nets
import test as test_script
import train
from nets.enhance import EnhanceNet, init_weights
from nets.face_recognition import FaceRecognitionLoss
from nets.facenet import load_facenet
from nets.losses import WEIGHTS, LowFaceNetObjective
from nets.retinaface import load_retinaface
from nets.vgg import load_vgg16
from utils.data import TrainSet
from utils.face_database import load_encodings
from utils.images import read_image, to_tensor, to_uint8, write_image


@pytest.fixture
def train_args(tiny_dataset, tmp_path, facenet_file, retinaface_weights, vgg_file):
    """Arguments of a quick run (128x128, CPU, no workers); the caller adds its own."""
    def make(*extra, ckpt="ckpt"):
        return ["--dataset_root", str(tiny_dataset), "--contrast_positive_path", str(tiny_dataset / "Contrast/high"),
                "--contrast_negative_path", str(tiny_dataset / "Contrast/low"), "--checkpoint_root", str(tmp_path / ckpt),
                "--log_path", str(tmp_path / "log/train.txt"), "--database_root", str(tmp_path / "database"),
                "--encoding_root", str(tmp_path / "encoding"), "--facenet_checkpoint", str(facenet_file),
                "--retinaface_checkpoint", str(retinaface_weights), "--vgg_checkpoint", str(vgg_file),
                "--crop_size", "128", "--num_workers", "0", "--device", "cpu", *extra]
    return make


def test_one_epoch_writes_loadable_checkpoints_and_readable_log(train_args, tmp_path):
    train.main(train_args("--epoch_num", "1", "--log_every", "1"))
    model = nets.load("enhance", tmp_path / "ckpt/epoch0.pth")  # a bare state dict, as test.py loads it
    assert isinstance(model, EnhanceNet)
    resume = torch.load(tmp_path / "ckpt/resume.pth", weights_only=True)
    assert (resume["epoch"], resume["batch"]) == (1, 0)
    assert set(resume) >= {"model", "optimizer", "epoch", "batch", "rng"}
    log = (tmp_path / "log/train.txt").read_text().splitlines()
    steps = [line for line in log if line.startswith("epoch 0 iter")]
    assert len(steps) == 3  # 6 images, batch 2, a line per iteration
    for name in ["loss", "face_acc", "brightness", *WEIGHTS]:
        assert f" {name} " in steps[0], f"{name} missing from the log line"
    assert sorted(os.listdir(tmp_path / "database/LaPa-Face")) == \
        ["Alejandro_Toledo_0001.jpg", "Angelina_Jolie_0001.jpg", "Bill_Clinton_0001.jpg"]
    assert (tmp_path / "encoding/LaPa-Face_encoding.npy").exists()


def test_resume_gives_the_same_next_step(train_args, tmp_path):
    train.main(train_args("--max_iters", "2", ckpt="straight"))
    train.main(train_args("--max_iters", "1", ckpt="stopped"))
    train.main(train_args("--max_iters", "1", "--resume", ckpt="stopped"))
    straight = torch.load(tmp_path / "straight/resume.pth", weights_only=True)
    resumed = torch.load(tmp_path / "stopped/resume.pth", weights_only=True)
    assert (resumed["epoch"], resumed["batch"]) == (straight["epoch"], straight["batch"]) == (0, 2)
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=1e-6, msg=k)


def test_objective_decreases_on_a_fixed_batch(tiny_dataset, tmp_path, facenet_file, retinaface_weights, vgg_file):
    torch.manual_seed(1)
    detector = load_retinaface(retinaface_weights)
    facenet = load_facenet(facenet_file)
    face_set = tiny_dataset / "LaPa-Face"
    encodings, names = load_encodings(str(face_set / "normal"), str(tmp_path / "db"), str(tmp_path / "enc"),
                                      "LaPa-Face", detector, facenet, str(facenet_file), "cpu")
    data = TrainSet(str(face_set), names, 128, str(tiny_dataset / "Contrast/high"), str(tiny_dataset / "Contrast/low"))
    low, seg, labels, pos, neg = torch.utils.data.default_collate([data[0], data[3]])
    model = init_weights(EnhanceNet())
    objective = LowFaceNetObjective(load_vgg16(vgg_file), FaceRecognitionLoss(detector, facenet, encodings))
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
    assert history[-1] < history[0] - 1e-3, history


def test_test_py_matches_a_direct_network_call(tmp_path):
    torch.manual_seed(0)
    model = init_weights(EnhanceNet()).eval()
    torch.save(model.state_dict(), tmp_path / "epoch0.pth")
    rng = np.random.default_rng(0)
    images = {"a.png": (40, 56), "b.png": (40, 56), "id/c.png": (33, 71)}  # two of one size: batched together
    for rel, (h, w) in images.items():
        write_image((rng.random((h, w, 3)) * 90).astype(np.uint8), str(tmp_path / "in" / rel))
    code = test_script.main(["--underexposed_path", str(tmp_path / "in"), "--enhanced_path", str(tmp_path / "out"),
                             "--enhance_checkpoint", str(tmp_path / "epoch0.pth"), "--device", "cpu",
                             "--batch_size", "3", "--num_workers", "0"])
    assert code == 0
    for rel in images:
        x = to_tensor(read_image(str(tmp_path / "in" / rel)))[None]
        with torch.no_grad():
            expected = to_uint8(model(x)[0][0])
        np.testing.assert_array_equal(read_image(str(tmp_path / "out" / rel)), expected, err_msg=rel)
