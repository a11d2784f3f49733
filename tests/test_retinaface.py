"""RetinaFace detector: checkpoint layout, parity with the published detector (raw outputs and detections,
numpy-list and tensor-batch paths), batching, letterbox mapping, biggest-face rule, loading errors."""
import numpy as np
import pytest
import torch

from conftest import assert_close, load_manifest, load_parity
from nets.retinaface import FaceDetector, RetinaFace, biggest_face, load_retinaface
from utils.checkpoint import CheckpointError

NAMES = ("astronaut", "astronaut_dark")


@pytest.fixture(scope="module")
def detector(retinaface_weights):
    return load_retinaface(retinaface_weights, "cpu")


@pytest.fixture(scope="module")
def ref():
    return load_parity("face")


def _images(ref):
    return [ref[n]["image_uint8_rgb"].numpy() for n in NAMES]


def _as_batch(images):
    return torch.stack([torch.from_numpy(i) for i in images]).permute(0, 3, 1, 2).float()


def _assert_dets(dets, expected, what):
    assert dets.dtype == torch.float64 and dets.shape == expected.shape, f"{what}: {tuple(dets.shape)} != {tuple(expected.shape)}"
    """Pixels within 0.01 (we are within 1e-4 of the published float32 values), scores within 1e-5."""
    assert_close(dets[:, :4], expected[:, :4], rtol=0, atol=0.01, what=f"{what} boxes")
    assert_close(dets[:, 4], expected[:, 4], rtol=0, atol=1e-5, what=f"{what} scores")
    assert_close(dets[:, 5:], expected[:, 5:], rtol=0, atol=0.01, what=f"{what} landmarks")


def test_state_dict_matches_manifest():
    model = RetinaFace()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == load_manifest("retinaface_mobilenet0.25")


@pytest.mark.parametrize("path", ["list", "tensor"])
def test_raw_outputs_match_published(detector, ref, path):
    """Letterbox + mean subtraction + network (softmaxed conf) on both images in one batch.
    The tensor path resizes with F.interpolate, which differs from cv2's float resize by < 0.01 grey level."""
    images = _images(ref)
    x, shapes = detector.preprocess(images if path == "list" else _as_batch(images))
    assert x.shape == (2, 3, 640, 640) and shapes == [(512, 512)] * 2
    with torch.no_grad():
        outs = detector.model(x)
    atol = 1e-4 if path == "list" else 3e-4
    for k, name in enumerate(NAMES):
        for out, key in zip(outs, ("raw_loc", "raw_conf", "raw_landms")):
            assert_close(out[k:k + 1], ref[name][key], rtol=1e-4, atol=atol, what=f"{path} {name} {key}")


@pytest.mark.parametrize("path", ["list", "tensor"])
def test_detections_match_published(detector, ref, path):
    images = _images(ref)
    batch = _as_batch(images).requires_grad_()  # detect must not need or build a graph
    dets = detector.detect(images if path == "list" else batch)
    assert len(dets) == 2
    for d, name in zip(dets, NAMES):
        assert not d.requires_grad
        _assert_dets(d, ref[name]["dets"], f"{path} {name}")


def test_batch_of_mixed_sizes_equals_one_by_one(detector, ref):
    a, dark = _images(ref)
    images = [a, a[40:340, 60:500].copy(), np.pad(dark, ((0, 0), (128, 128), (0, 0)), constant_values=128),
              a[::2, ::2].astype(np.float64), a[:1, :1]]
    batched = detector.detect(images)
    assert [len(d) for d in batched[:4]] == [1, 1, 1, 1] and len(batched[4]) == 0
    for k, img in enumerate(images):
        single = detector.detect([img])[0]
        assert_close(batched[k], single, rtol=0, atol=1e-3, what=f"image {k}")


def test_tensor_letterbox_equals_cv2_on_non_square(detector, ref):
    img = ref["astronaut"]["image_uint8_rgb"].numpy()[40:340, 60:517]  # 300x457: int() rounding and padding
    xl, _ = detector.preprocess([img])
    xt, _ = detector.preprocess(_as_batch([img]))
    assert_close(xt, xl, rtol=0, atol=0.05, what="letterboxed input")
    _assert_dets(detector.detect(_as_batch([img]))[0], detector.detect([img])[0], "tensor vs list path")


@pytest.mark.parametrize("path", ["list", "tensor"])
def test_letterbox_size_is_truncated(detector, path):
    """301x457 scales by 640/457 to 421.53 rows: the published int() gives 421 rows, at (640 - 421) // 2 = 109."""
    x, _ = detector.preprocess([np.zeros((301, 457, 3), np.uint8)] if path == "list" else torch.zeros(1, 3, 301, 457))
    image_rows = torch.nonzero((x[0] == -detector.mean[0]).all(0).all(1)).flatten()
    assert image_rows.tolist() == list(range(109, 109 + 421))
    grey = torch.cat([x[0, :, :109], x[0, :, 530:]], 1)
    assert torch.equal(grey, (128 - detector.mean[0]).expand_as(grey))


def test_grey_padding_is_centred(detector, ref):
    """A 320x640 image is padded (grey 128, 160 rows above) into 640x640 without resizing: detecting on it
    equals detecting on the padded image itself, shifted by the 160 rows."""
    strip = np.pad(ref["astronaut"]["image_uint8_rgb"].numpy()[:320], ((0, 0), (64, 64), (0, 0)), constant_values=128)
    square = np.pad(strip, ((160, 160), (0, 0), (0, 0)), constant_values=128)
    d_strip, d_square = detector.detect([strip, square])
    assert len(d_strip) == 1
    d_square[:, [1, 3, 6, 8, 10, 12, 14]] -= 160
    assert_close(d_strip, d_square, rtol=0, atol=1e-3, what="strip vs padded square")


@pytest.mark.parametrize("h, w", [(300, 457), (457, 301), (1000, 800), (250, 250), (123, 1280)])
def test_unletterbox_is_published_correct_boxes(detector, h, w):
    """Published retinaface_correct_boxes (offset from the unrounded scaled size), then times (w, h)."""
    d = torch.rand(6, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    input_shape, image_shape = np.array([640.0, 640.0]), np.array([h, w], dtype=np.float64)
    new_shape = image_shape * np.min(input_shape / image_shape)
    offset, scale = (input_shape - new_shape) / 2.0 / input_shape, input_shape / new_shape
    expected = d.numpy().copy()
    expected[:, :4] = (expected[:, :4] - np.tile(offset[::-1], 2)) * np.tile(scale[::-1], 2) * [w, h, w, h]
    expected[:, 5:] = (expected[:, 5:] - np.tile(offset[::-1], 5)) * np.tile(scale[::-1], 5) * np.tile([w, h], 5)
    assert_close(detector._unletterbox(d, h, w), expected, rtol=1e-9, atol=1e-9, what="unletterbox")


def test_biggest_face_uses_integer_coordinates():
    rows = torch.zeros(3, 15, dtype=torch.float64)
    rows[0, :4] = torch.tensor([0.0, 0.0, 9.6, 10.0])   # float area 96, integer area 90
    rows[1, :4] = torch.tensor([0.9, 0.0, 10.0, 10.0])  # float area 91, integer area 100
    rows[2, :4] = torch.tensor([0.0, 0.0, 10.9, 10.0])  # integer area 100 too: the earlier row wins
    assert torch.equal(biggest_face(rows), rows[1])
    assert biggest_face(torch.zeros(0, 15, dtype=torch.float64)) is None


def test_wrong_checkpoint_names_the_file(tmp_path):
    wrong = tmp_path / "not_retinaface.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="not_retinaface.pth"):
        load_retinaface(wrong, "cpu")
    missing = tmp_path / "Retinaface_mobilenet0.25.pth"
    with pytest.raises(CheckpointError) as e:
        load_retinaface(missing, "cpu")
    assert str(missing) in str(e.value) and "checkpoint/" in str(e.value)


def test_detector_defaults_and_priors(detector):
    assert isinstance(detector, FaceDetector) and detector.priors.shape == (16800, 4)
    assert (detector.confidence, detector.nms_iou, detector.size) == (0.5, 0.3, 640)
