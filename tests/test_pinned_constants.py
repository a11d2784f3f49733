"""Every published constant and formula pinned by an expectation from outside the code under test: the numbers of
SPEC written out here, formulas written out here, values computed by hand, and the published code's outputs in
tests/reference/. None of the expectations below comes from the implementation's own tables or functions."""
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
from conftest import IDENTITIES, ROOT, assert_close, load_parity, parity_weights
from nets import losses
from nets.enhance import EnhanceNet
from nets.face_recognition import FaceRecognitionLoss, encode_faces
from nets.facenet import load_facenet
from nets.retinaface import load_retinaface
from nets.vgg import VGGFeatures
from torchvision.models import vgg16
from utils.data import TrainSet, read_labels, training_batch
from utils.face_database import load_encodings
from utils.images import read_image, write_image
from utils.metrics import brightness
from utils.validation import Validation

# SPEC section 3, written out
SPEC_WEIGHTS = {"contrast_feature": 0.62, "contrast_brightness": 0.22, "perceptual": 1.0, "color": 0.05,
                "smooth": 0.65, "seg_brightness": 1.0, "face": 1.0}
SPEC_TAP_WEIGHTS = (1 / 32, 1 / 16, 1 / 8)
SPEC_OFFSETS = ((1, 0), (0, 1), (1, 1), (1, -1), (2, 0), (0, 2), (2, 1), (2, -1), (1, 2), (1, -2), (2, 2), (2, -2))
SPEC_CLASSES = 11
SPEC_TRAINING = {"epoch_num": 100, "batch_size": 2, "crop_size": 384, "lr": 1e-4, "weight_decay": 1e-4, "seed": 1,
                 "log_every": 10, "checkpoint_root": "checkpoint/LLE/", "dataset_name": "LaPa-Face"}


# ---------------------------------------------------------------- 1. the objective's constants

def test_objective_tables_hold_the_published_constants():
    assert losses.WEIGHTS == SPEC_WEIGHTS
    assert losses.CONTRAST_TAP_WEIGHTS == SPEC_TAP_WEIGHTS
    assert tuple(map(tuple, losses.SMOOTH_OFFSETS)) == SPEC_OFFSETS
    assert losses.NUM_CLASSES == SPEC_CLASSES
    args = train.parse_args([])
    assert {k: getattr(args, k) for k in SPEC_TRAINING} == SPEC_TRAINING


@pytest.mark.parametrize("term", sorted(SPEC_WEIGHTS))
def test_each_term_enters_the_total_with_its_published_weight(term):
    objective = losses.LowFaceNetObjective(vgg=None)
    terms = {k: torch.tensor(0.0) for k in SPEC_WEIGHTS}
    terms[term] = torch.tensor(3.0)
    assert objective.total(terms).item() == pytest.approx(3.0 * SPEC_WEIGHTS[term], rel=1e-7)


def test_objective_total_is_the_spec_weighted_sum_of_the_published_values():
    ref = load_parity("losses")
    vgg = parity_weights(VGGFeatures(vgg16(weights=None).features), "vgg16")
    with torch.no_grad():
        total, terms, _ = losses.LowFaceNetObjective(vgg)(ref["enhanced"], ref["illumination"], ref["input"],
                                                          ref["positives"], ref["negatives"], ref["seg_labels"])
    expected = sum(SPEC_WEIGHTS[k] * ref["values"][k].double() for k in terms)
    assert_close(total, expected, rtol=1e-5, atol=0, what="total")


@pytest.mark.parametrize("tap", range(3))
def test_contrastive_taps_are_weighted_1_32_1_16_1_8(tap):
    """Only tap `tap` differs: L1(a, p) = 1, L1(a, n) = 2, so the loss is w_tap / 2 (a = p elsewhere)."""
    shape = (2, 4, 6, 6)
    a = [torch.full(shape, 2.0) for _ in range(3)]
    p = [t.clone() for t in a]
    n = [torch.zeros(shape) for _ in range(3)]
    p[tap] = torch.full(shape, 1.0)
    loss = losses.contrast_feature_loss(a, p, n)
    assert loss.item() == pytest.approx(SPEC_TAP_WEIGHTS[tap] / (2 + 1e-7), rel=1e-6)


def test_smoothness_counts_the_12_published_offsets():
    """A flat input (edge weights exp(0) = 1) and an illumination with one bright pixel in the middle: each offset o
    sees two pairs of difference 1 among 3 (H - |dy|) (W - |dx|) pairs (one image), so the loss is
    sum over the 12 offsets of 2 * 2 / (3 (H - |dy|)(W - |dx|))."""
    h, w = 9, 11
    illumination = torch.zeros(1, 3, h, w)
    illumination[0, :, 4, 5] = 1.0
    expected = sum(2 * 2 * 3 / (3 * (h - abs(dy)) * (w - abs(dx))) for dy, dx in SPEC_OFFSETS)
    assert losses.smooth_loss(torch.full((1, 3, h, w), 0.3), illumination).item() == pytest.approx(expected, rel=1e-6)


def test_smoothness_edge_weight_is_exp_of_minus_0_005_times_the_rgb_distance():
    """Input with one vertical edge (left half 0, right half v per channel) and a uniform illumination gradient
    along x (difference 1 per pixel, so g_o = |dx|): w_o is 1 for pairs on one side and exp(-0.005 * 3 v^2)
    for pairs crossing the edge."""
    h, w, v = 6, 8, 3.0
    x = torch.zeros(1, 3, h, w)
    x[..., w // 2:] = v
    illumination = torch.arange(w, dtype=torch.float32).expand(1, 3, h, w).contiguous()
    crossing = math.exp(-0.005 * 3 * v * v)
    expected = 0.0
    for dy, dx in SPEC_OFFSETS:
        columns = [c for c in range(w) if 0 <= c + dx < w]
        weights = [crossing if (c < w // 2) != (c + dx < w // 2) else 1.0 for c in columns]
        expected += 2 * (sum(weights) / len(weights)) * abs(dx)
    assert losses.smooth_loss(x, illumination).item() == pytest.approx(expected, rel=1e-6)


def _published_seg_brightness(enhanced, labels):
    """SPEC section 3 written out with the published BxBxHxW broadcast (small tensors only)."""
    grey = enhanced.mean(1, keepdim=True)  # Bx1xHxW
    loss = 0.0
    for c in range(SPEC_CLASSES):
        t = torch.where(labels == c, grey, torch.zeros(()))  # BxBxHxW
        d = t.mean()
        t = torch.where(t == 0, d, t)
        loss = loss + ((t - d.detach().clone()) ** 2).mean()
    return loss


@pytest.mark.parametrize("classes", [(10,), (0, 1), (3, 7, 10, 11)])
def test_semantic_brightness_counts_the_11_lapa_classes(classes):
    """Class 10 (hair) must count, class 11 must not: labels holding only those classes give the published value."""
    g = torch.Generator().manual_seed(0)
    enhanced = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.tensor(classes)[torch.randint(len(classes), (2, 5, 7), generator=g)]
    value = losses.seg_brightness_loss(enhanced, labels)
    expected = _published_seg_brightness(enhanced, labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    if classes == (10,):
        assert value.item() > 1e-3


def test_color_kernel_is_the_published_gaussian():
    """SPEC: differences of the normal CDF at 22 points evenly spaced in [-3 - 1/6, 3 + 1/6], sqrt of the outer
    product, normalized to sum 1 (the published 2-D kernel); the loss blurs the channel sum with it."""
    points = [-3 - 1 / 6 + k * (6 + 1 / 3) / 21 for k in range(22)]
    cdf = [0.5 * (1 + math.erf(p / math.sqrt(2))) for p in points]
    k1 = np.diff(cdf)
    kernel = np.sqrt(np.outer(k1, k1))
    kernel /= kernel.sum()
    d = torch.zeros(1, 3, 31, 31, dtype=torch.float64)
    d[0, 0, 15, 15], d[0, 2, 15, 15] = 0.6, 0.4  # channel sum: an impulse of 1, so the blur is the kernel itself
    value = losses.ColorLoss().double()(d, torch.zeros_like(d)).item()
    expected = 3 * (kernel ** 2).sum() / (3 * 31 * 31)  # 3 identical output channels, each the kernel
    assert value == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- 2. brightness

SOLID = {(200, 50, 10): (0.299 * 200 + 0.587 * 50 + 0.114 * 10) / 255,
         (10, 200, 50): (0.299 * 10 + 0.587 * 200 + 0.114 * 50) / 255,
         (0, 0, 255): 0.114, (255, 255, 255): 1.0}


def test_brightness_is_the_published_luma_of_hand_computed_colours():
    assert brightness(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)).item() == pytest.approx(0.299, abs=1e-7)
    assert brightness(torch.tensor([0, 1.0, 0]).view(1, 3, 1, 1)).item() == pytest.approx(0.587, abs=1e-7)
    assert brightness(torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1)).item() == pytest.approx(0.114, abs=1e-7)
    batch = torch.stack([torch.tensor(c, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 4, 5) for c in SOLID])
    assert brightness(batch).item() == pytest.approx(sum(SOLID.values()) / len(SOLID), abs=1e-6)


def identity_enhancer():
    """EnhanceNet whose output r is its input: every weight 0 and conv.5's bias 100, so x7 = sigmoid(100) = 1,
    i = clamp(1 + x, 1e-4, 1) = 1 and r = x / 1."""
    model = EnhanceNet()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.conv[5].bias.fill_(100.0)
    return model


def test_train_log_brightness_is_the_luma_of_the_enhanced_batch():
    monitor = train.StepMonitor(torch.device("cpu"))
    enhanced = torch.stack([torch.tensor(c, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 4, 4)
                            for c in list(SOLID)[:2]])
    terms = {"smooth": torch.tensor(1.0)}
    monitor.update(torch.tensor(1.0), terms, torch.tensor(0.1), enhanced, None, torch.zeros(2, dtype=torch.long), 1)
    _, _, _, value = monitor.read()
    assert value == pytest.approx((SOLID[(200, 50, 10)] + SOLID[(10, 200, 50)]) / 2, abs=1e-6)


def test_validation_scores_hand_computed_brightness_and_psnr(tmp_path, retinaface_weights, facenet_file):
    """Solid-colour images through an identity network: brightness is the luma of the colour, PSNR that of a
    known offset against normal/ (10 log10(255^2 / 20^2) for a difference of 20 in every value)."""
    for i, colour in enumerate(list(SOLID)[:2]):
        low = np.full((40, 48, 3), colour, np.uint8)
        write_image(low, str(tmp_path / "val/underexposed" / f"id{i}_0001.png"))
        write_image(np.minimum(low.astype(int) + 20, 255).astype(np.uint8) if i == 0 else low,
                    str(tmp_path / "val/normal" / f"id{i}_0001.png"))
    validation = Validation(str(tmp_path / "val"), batch_size=2, workers=0)
    validation.recognition = (load_retinaface(retinaface_weights), load_facenet(facenet_file),
                              torch.zeros(1, 128), ["nobody"])
    measures, preview = validation(identity_enhancer(), torch.device("cpu"), preview_images=1)
    assert measures["brightness"] == pytest.approx((SOLID[(200, 50, 10)] + SOLID[(10, 200, 50)]) / 2, abs=1e-6)
    assert measures["psnr"] == pytest.approx((10 * math.log10(255 ** 2 / 20 ** 2) + 100) / 2, abs=1e-3)
    assert measures["images"] == 2 and preview.shape[0] == 40


# ---------------------------------------------------------------- 4. identity labels are database rows

def test_training_labels_are_the_database_rows_of_their_identities(tiny_dataset, tmp_path, retinaface_weights,
                                                                   facenet_file):
    """tiny_dataset's LaPa-Face holds IDENTITIES[:3] x 2 photos, NAME_0001.jpg and NAME_0002.jpg; the database keeps
    each identity's first photo. A training image's label must be the row of its own identity's encoding: the
    face loss of that identity's normal photo is then the lowest with its own label."""
    detector, facenet = load_retinaface(retinaface_weights), load_facenet(facenet_file)
    face_set = tiny_dataset / "LaPa-Face"
    encodings, names = load_encodings(str(face_set / "normal"), str(tmp_path / "db"), str(tmp_path / "enc"),
                                      "LaPa-Face", detector, facenet, "cpu")
    assert sorted(names) == IDENTITIES[:3]
    data = TrainSet(str(face_set), names, 128, str(tiny_dataset / "Contrast/high"), str(tiny_dataset / "Contrast/low"))
    expected = {f"{name}_{k:04d}.jpg": names.index(name) for name in IDENTITIES[:3] for k in (1, 2)}
    assert {f: data[i][2] for i, f in enumerate(data.files)} == expected
    # the row of that label is the encoding of the identity's own database photo
    for name in IDENTITIES[:3]:
        own, kept = encode_faces([read_image(tmp_path / "db" / f"{name}_0001.jpg")], detector, facenet, "cpu")
        assert kept == [0]
        torch.testing.assert_close(encodings[expected[f"{name}_0001.jpg"]], own[0], rtol=0, atol=1e-5)
    # the face loss of a normal photo falls when its label is its identity's row
    loss = FaceRecognitionLoss(detector, facenet, encodings)
    for name in IDENTITIES[:3]:
        image = torch.from_numpy(read_image(face_set / "normal" / f"{name}_0001.jpg")).permute(2, 0, 1)[None] / 255
        values = [loss(image, torch.tensor([label]))[0].item() for label in range(len(names))]
        assert int(np.argmin(values)) == names.index(name), (name, values)


# ---------------------------------------------------------------- 5. parsing maps keep their classes

@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
@pytest.mark.parametrize("size", [3, 37, 101])
def test_resized_parsing_maps_hold_only_the_original_classes(tmp_path, mode, size):
    labels = np.zeros((50, 60), np.uint8)
    labels[10:40, 15:45] = 1
    labels[5:15, 20:40] = 10
    labels[25:30, 25:30] = 4
    path = tmp_path / "map.png"
    if mode == "RGB":
        Image.fromarray(np.repeat(labels[..., None], 3, 2)).save(path)
    elif mode == "P":  # a palette map whose indices are the classes (colours of their own)
        im = Image.new("P", (60, 50))
        im.putdata(labels.flatten().tolist())
        im.putpalette([v for i in range(256) for v in ((37 * i) % 256, (91 * i) % 256, (13 * i) % 256)])
        im.save(path)
    else:
        Image.fromarray(labels).save(path)
    image = torch.zeros(4, 4, 3, dtype=torch.uint8)  # the batch's images: only the map is looked at
    batch = ([image], [read_labels(path)], torch.tensor([0]), [image], [image])
    resized = training_batch(batch, size, torch.device("cpu"))[1][0]  # as train.py resizes it, on the device
    assert resized.shape == (size, size) and resized.dtype == torch.long
    assert set(resized.unique().tolist()) <= {0, 1, 4, 10}
    # nearest neighbour as PyTorch defines it: source index floor(dst * in / out)
    rows = [math.floor(i * 50 / size) for i in range(size)]
    cols = [math.floor(j * 60 / size) for j in range(size)]
    assert resized.tolist() == labels[np.ix_(rows, cols)].tolist()


# ---------------------------------------------------------------- 8. image depth: exact values at the extremes

def _pgm(path, maxval, values):
    values = np.asarray(values)
    path.write_bytes(f"P5\n{values.shape[1]} {values.shape[0]}\n{maxval}\n".encode()
                     + values.astype(">u2" if maxval > 255 else "u1").tobytes())
    return path


def _grey(path):
    image = read_image(str(path))
    assert (image == image[..., :1]).all()
    return image[0, :, 0].tolist()


def test_16_bit_images_divide_by_65535(tmp_path):
    """v * 255 / 65535 = v / 257, rounded to nearest (ties to even). 51529 / 257 = 200.502 -> 201, where dividing
    by 65536 gives 200.498 -> 200; 65535 -> 255, 65407 -> 255 (254.502), 65406 -> 254,
    1 -> 0, 129 -> 1, 128 -> 0."""
    values = [0, 1, 128, 129, 51529, 65406, 65407, 65535]
    expected = [0, 0, 0, 1, 201, 254, 255, 255]
    Image.fromarray(np.array([values], np.uint16)).save(tmp_path / "sixteen.png")
    assert _grey(tmp_path / "sixteen.png") == expected
    assert _grey(_pgm(tmp_path / "sixteen.pgm", 65535, [values])) == expected
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value against the formula
    Image.fromarray(every).save(tmp_path / "every.png")
    assert (read_image(str(tmp_path / "every.png"))[..., 0] == np.rint(every / 257.0)).all()


def test_10_bit_images_divide_by_1023(tmp_path):
    """A PGM of maxval 1023: v * 255 / 1023, nearest. 1023 -> 255, 2 -> 0 (0.4985), 3 -> 1 (0.748); 513 -> 128
    (127.87) where dividing by 1024 gives 127.75 -> 128, and 1021 -> 255 (254.50) where 1024 gives 254.25 -> 254."""
    assert _grey(_pgm(tmp_path / "ten.pgm", 1023, [[0, 2, 3, 513, 1021, 1023]])) == [0, 0, 1, 128, 255, 255]


def test_32_bit_images_divide_by_2_to_the_32_minus_1(tmp_path):
    """A 32-bit integer TIFF: v * 255 / (2^32 - 1) = v / 16843009, nearest. 2^31 - 1 -> 127 (127.49999997);
    8421505 -> 1 (0.50000003), 8421504 -> 0 (0.49999997); dividing by 2^31 - 1 (signed maximum) would give 255."""
    values = [0, 8421504, 8421505, 16843009 * 100, 2 ** 31 - 1]
    Image.fromarray(np.array([values], np.int32)).save(tmp_path / "thirty_two.tif")
    assert _grey(tmp_path / "thirty_two.tif") == [0, 0, 1, 100, 127]


# ---------------------------------------------------------------- provenance: the generator's weight probes

def test_reference_generator_writes_the_stored_weight_probes():
    """tests/reference/make_reference.py (which needs the published checkout for everything else) rebuilds
    parity_weights_probe.pt from the formula and the manifests, bit for bit but for the order of a float64 sum (two of
    its four modules here: VGG16's 14.7 million weights take long on a small CPU; test_core_parity checks the formula
    on all four)."""
    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    try:
        import make_reference
    finally:
        sys.path.remove(str(ROOT / "tests" / "reference"))
    stored = load_parity("weights_probe")
    tags = ("enhance", "deeplab")
    made = make_reference.weights_probe_file(int(stored["seed"]), tags)
    assert set(made) == {"seed", "doc", *tags} and int(made["seed"]) == int(stored["seed"])
    for tag in tags:
        assert made[tag].keys() == stored[tag].keys(), tag
        for key, value in stored[tag].items():  # [sum, first, last]: the float64 sum's order follows the CPU's kernels
            torch.testing.assert_close(made[tag][key], value, rtol=1e-12, atol=0, msg=f"{tag}.{key}")
            assert torch.equal(made[tag][key][1:], value[1:]), f"{tag}.{key}"
