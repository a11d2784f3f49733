"""FaceNet layout and loading, the two face-crop paths and the face loss, against the published code's outputs."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, load_manifest, load_parity, parity_weights
from nets.face_recognition import (FaceRecognitionLoss, align_face_numpy, align_faces, cosine_logits,
                                   encode_faces, face_angle)
from nets.facenet import FaceNet, load_facenet
from nets.retinaface import load_retinaface
from utils.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def face_ref():
    return load_parity("face")


@pytest.fixture(scope="module")
def facenet():
    return parity_weights(FaceNet("mobilenet"), "facenet").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def detector(retinaface_weights):
    return load_retinaface(retinaface_weights, "cpu")


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- FaceNet layout and loading

@pytest.mark.parametrize("backbone", ["mobilenet", "inception_resnetv1"])
def test_facenet_state_dict_matches_manifest(backbone):
    assert _shapes(FaceNet(backbone)) == load_manifest(f"facenet_{backbone}")


def test_facenet_embeddings_are_unit_vectors():
    out = FaceNet("inception_resnetv1").eval()(torch.rand(1, 3, 160, 160))
    assert out.shape == (1, 128)
    assert_close(out.norm(dim=1), torch.ones(1), what="embedding norm")


def test_load_facenet_drops_classifier_and_freezes(tmp_path, face_ref, facenet):
    state = dict(facenet.state_dict())
    state["classifier.weight"], state["classifier.bias"] = torch.zeros(10, 128), torch.zeros(10)
    path = tmp_path / "facenet_mobilenet.pth"
    torch.save(state, path)
    model = load_facenet(path, "mobilenet", "cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = face_ref["astronaut"]["facenet_input"].clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "a frozen FaceNet must still pass gradient to its input"


@pytest.mark.parametrize("change, key", [("drop", "last_bn.running_var"), ("add", "head.weight")])
def test_load_facenet_rejects_wrong_keys(tmp_path, facenet, change, key):
    state = dict(facenet.state_dict())
    if change == "drop":
        del state[key]
    else:
        state[key] = torch.zeros(1)
    path = tmp_path / "bad_facenet.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_facenet(path, "mobilenet", "cpu")
    assert str(path) in str(err.value) and key in str(err.value)


# ---------------------------------------------------------------- database path (numpy)

def test_face_angle_convention():
    assert face_angle([10.0, 5.0, 10.0, 9.0]) == 0.0  # eyes stacked vertically: x == 0
    assert face_angle([[0.0, 0.0], [10.0, 10.0]]) == pytest.approx(45.0)  # right eye lower in the image


@pytest.mark.parametrize("name", ["astronaut", "astronaut_dark"])
def test_database_crop_and_embedding_match_published(face_ref, facenet, name):
    ref = face_ref[name]
    x = align_face_numpy(ref["image_uint8_rgb"].numpy(), ref["dets"][0])
    assert x.dtype == torch.float32
    assert_close(x, ref["facenet_input"], rtol=0, atol=1e-7, what=f"{name} facenet_input")
    with torch.no_grad():
        assert_close(facenet(x)[0], ref["embedding"], rtol=1e-5, atol=1e-6, what=f"{name} embedding")


# ---------------------------------------------------------------- loss path (differentiable)

def _stored_box_path(ref, facenet, row):
    """Logits, loss and input gradient of the differentiable path for one given detection row (in facenet's dtype)."""
    dtype = next(facenet.parameters()).dtype
    image = ref["image"].to(dtype, copy=True).requires_grad_(True)
    faces, found = align_faces(image, [row])
    assert found == [0]
    logits = cosine_logits(facenet(faces), ref["database"].to(dtype))
    loss = F.cross_entropy(logits, ref["label"])
    loss.backward()
    return logits, loss, image.grad


def test_train_path_with_stored_box_matches_published(face_ref, facenet):
    ref = face_ref["train_path"]
    logits, loss, grad = _stored_box_path(ref, facenet, ref["box"])
    assert_close(logits[0], ref["cos"], rtol=1e-4, atol=1e-6, what="cos")
    assert_close(loss, ref["face_loss"], rtol=1e-5, atol=1e-6, what="face_loss")
    # One ReLU6 pre-activation of FaceNet lies ~1e-6 from its threshold; in float32, which side it falls on depends
    # on the CPU's kernels and thread count (the published float32 gradient itself differs by up to 1.3 % of its
    # largest value between CPUs). So the gradient is compared in float64 with the published path run in float64
    # (grad_image_float64), which it matches to about 1e-7 of its largest value.
    _, _, grad = _stored_box_path(ref, copy.deepcopy(facenet).double(), ref["box"])
    assert_close(grad, ref["grad_image_float64"], scale=1e-6, what="grad_image_float64")


class RecordingDetector:
    """Passes start() and finish() through to the real detector and keeps every call's input batch size and
    detections."""

    def __init__(self, detector):
        self.detector, self.calls = detector, []

    def start(self, images):
        self.calls.append([len(images), None])
        return self.detector.start(images)

    def finish(self, started):
        self.calls[-1][1] = self.detector.finish(started)
        return self.calls[-1][1]


@pytest.fixture(scope="module")
def loss_batches(face_ref, facenet, detector):
    """FaceRecognitionLoss on the train_path image alone and in a batch of 3 with a blank image in the middle."""
    ref = face_ref["train_path"]
    recorder = RecordingDetector(detector)
    loss_fn = FaceRecognitionLoss(recorder, facenet, ref["database"])
    out = {}
    for name, images, labels in [("one", ref["image"], ref["label"]),
                                 ("three", torch.cat([ref["image"], torch.zeros_like(ref["image"]), ref["image"]]),
                                  torch.cat([ref["label"], torch.tensor([0]), ref["label"]]))]:
        images = images.clone().requires_grad_(True)
        loss, logits, found = loss_fn(images, labels)
        loss.backward()
        out[name] = dict(loss=loss.detach(), logits=logits.detach(), found=found, grad=images.grad)
    assert [n for n, _ in recorder.calls] == [1, 3], "one detector call per batch"
    out["row"] = recorder.calls[0][1][0][0]
    return out


def test_face_loss_with_detector_matches_published(face_ref, facenet, loss_batches):
    ref, got = face_ref["train_path"], loss_batches["one"]
    assert got["found"].tolist() == [True]
    assert_close(loss_batches["row"], ref["box"], rtol=0, atol=1e-3, what="detected box and landmarks")
    assert_close(got["logits"][0], ref["cos"], rtol=1e-4, atol=1e-6, what="cos")
    assert_close(got["loss"], ref["face_loss"], rtol=1e-5, atol=1e-6, what="face_loss")
    # The gradient is exact for the detected row ...
    _, _, grad = _stored_box_path(ref, facenet, loss_batches["row"])
    assert_close(got["grad"], grad, scale=1e-5, what="grad_image vs the path with the detected row")
    # ... but the detected landmarks differ from the stored ones by ~1e-5 px (float32 rounding), enough to flip
    # one ReLU6 gate of FaceNet, which moves the input gradient by ~2% (norm); it stays that close to published.
    rel = (got["grad"] - ref["grad_image"]).norm() / ref["grad_image"].norm()
    assert rel < 0.05, f"grad_image: relative norm error {rel:.3g}"


def test_face_loss_batch_of_three_with_a_blank_image(loss_batches):
    one, three = loss_batches["one"], loss_batches["three"]
    assert three["found"].tolist() == [True, False, True]
    assert_close(three["logits"][0], one["logits"][0], rtol=1e-5, atol=1e-7, what="logits of image 0")
    assert_close(three["logits"][2], one["logits"][0], rtol=1e-5, atol=1e-7, what="logits of image 2")
    assert torch.equal(three["logits"][1], torch.zeros(7)), "an image without a face gets zero logits"
    expected = (2 * one["loss"] + F.cross_entropy(torch.zeros(1, 7), torch.tensor([0]))) / 3
    assert_close(three["loss"], expected, rtol=1e-5, atol=1e-7, what="mean loss over the batch")
    assert torch.equal(three["grad"][1], torch.zeros_like(three["grad"][1]))
    assert_close(three["grad"][0] * 3, one["grad"][0], scale=1e-5, what="grad of image 0")


def test_encode_faces_leaves_out_images_without_a_face(face_ref, facenet, detector):
    dark = face_ref["astronaut_dark"]["image_uint8_rgb"].numpy()
    encodings, kept = encode_faces([dark * 0, dark], detector, facenet, "cpu", batch_size=1)
    assert kept == [1] and encodings.shape == (1, 128) and encodings.dtype == torch.float32
    assert_close(encodings[0], face_ref["astronaut_dark"]["embedding"], rtol=1e-4, atol=1e-5, what="dark encoding")
