"""Shared fixtures: the published code's outputs (tests/reference/), the weights they were made with (rebuilt by
the parity formula), the published RetinaFace detector (tests/weights/), face photos and a tiny data set.

LOWFACENET_REFERENCE points the parity tests at another folder of the same layout as tests/reference/ (parity_*.pt,
manifests/); its parity_weights_probe.pt gives the seed of the weights its outputs were made with."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parity_weights import fill  # noqa: E402  (tests/ is on the path under pytest)
from utils.face_photos import IDENTITIES, make_face_photos  # noqa: E402

IDENTITIES = sorted(IDENTITIES)

REFERENCE = Path(os.environ.get("LOWFACENET_REFERENCE", ROOT / "tests" / "reference"))
RETINAFACE = ROOT / "tests" / "weights" / "Retinaface_mobilenet0.25.pth"  # published, MIT (licence beside it)

torch.use_deterministic_algorithms(False)


def _need(path):
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing: tests/reference/ is part of the repository; LOWFACENET_REFERENCE "
                                "must name a folder with parity_*.pt and manifests/")
    return Path(path)


def load_parity(name):
    """The dict stored in reference/parity_<name>.pt."""
    return torch.load(_need(REFERENCE / f"parity_{name}.pt"), map_location="cpu", weights_only=True)


def load_manifest(name):
    """key -> shape of a published checkpoint format."""
    with open(_need(REFERENCE / "manifests" / f"{name}.json")) as f:
        return {k: tuple(v) for k, v in json.load(f)["keys"].items()}


SEED = int(load_parity("weights_probe")["seed"])  # the seed of the parity weights of REFERENCE's outputs


def parity_weights(module, tag):
    """`module` filled with the parity weights (SPEC section 1) its published outputs in REFERENCE were made with:
    tag 'enhance', 'vgg16' (keys features.N.*), 'facenet' or 'deeplab'."""
    return fill(module, tag, SEED)


@pytest.fixture(scope="session")
def retinaface_weights():
    return _need(RETINAFACE)


@pytest.fixture(scope="module")
def detector(retinaface_weights):
    """The published RetinaFace on the CPU."""
    from nets.retinaface import load_retinaface
    return load_retinaface(retinaface_weights, "cpu")


@pytest.fixture(scope="module")
def facenet(facenet_file):
    """FaceNet (MobileNet) with the parity weights, on the CPU."""
    from nets.facenet import load_facenet
    return load_facenet(facenet_file, "mobilenet", "cpu")


@pytest.fixture(scope="session")
def face_photos(tmp_path_factory):
    """Face photos in LFW layout (NAME/NAME_000K.jpg, 250x250), IDENTITIES x 3, made from scikit-image's photos."""
    return make_face_photos(tmp_path_factory.mktemp("faces"))


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what="", scale=None):
    """Relative error check of SPEC section 1, with a message naming the quantity. With `scale`, the tolerance is
    relative to the size of the quantity (rtol = atol / max|expected| = scale): for gradients and deep chains, whose
    smallest elements are rounding noise that any CPU's kernels may change."""
    actual = torch.as_tensor(actual).detach().double().cpu()
    expected = torch.as_tensor(expected).detach().double().cpu()
    if scale is not None:
        rtol, atol = scale, scale * expected.abs().max().item()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="session")
def facenet_file(tmp_path_factory):
    """The FaceNet parity weights of parity_face.pt as a bare-state-dict .pth file (a stand-in facenet_mobilenet.pth)."""
    from nets.facenet import FaceNet
    path = tmp_path_factory.mktemp("facenet") / "facenet_mobilenet.pth"
    torch.save(parity_weights(FaceNet("mobilenet"), "facenet").state_dict(), path)
    return path


def copy_faces(faces, dest, identities, per_identity, flat=False):
    """Copy the first `per_identity` photos of each of `identities` (folder names of face_photos) into dest:
    LFW layout (dest/NAME/NAME_NNNN.jpg) or, flat=True, dest/NAME_NNNN.jpg. Returns the relative paths."""
    import shutil
    rels = []
    for name in identities:
        for src in sorted((Path(faces) / name).iterdir())[:per_identity]:
            rel = src.name if flat else f"{name}/{src.name}"
            (Path(dest) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, Path(dest) / rel)
            rels.append(rel)
    return rels


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    """The VGG16 parity weights of parity_losses.pt (features.0..22) as a local file, standing in for torchvision's
    download."""
    from nets.vgg import vgg16_trunk
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    torch.save(parity_weights(vgg16_trunk(), "vgg16").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, face_photos):
    """dataset/ in the published layout: LaPa-Face (3 identities x 2 photos: normal, underexposed, seg)
    and Contrast/high|low, made from face_photos darkened with the project's synthesis."""
    import numpy as np
    from PIL import Image
    from utils.images import read_image, write_image
    from utils.lowlight import darken
    root = tmp_path_factory.mktemp("dataset")
    face_set = root / "LaPa-Face"
    rels = copy_faces(face_photos, face_set / "normal", IDENTITIES[:3], 2, flat=True)
    rng = np.random.default_rng(0)
    for i, rel in enumerate(rels):
        image = read_image(face_set / "normal" / rel)
        write_image(darken(image, rng, "gamma", gamma=2.2, noise_std=0.28), str(face_set / "underexposed" / rel))
        labels = np.zeros(image.shape[:2], np.uint8)  # background, a skin disc, hair on top
        yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
        labels[(yy - 125) ** 2 + (xx - 125) ** 2 < 60 ** 2] = 1
        labels[:60, 70:180] = 10
        (face_set / "seg").mkdir(exist_ok=True)
        Image.fromarray(labels).save(face_set / "seg" / (Path(rel).stem + ".png"))
        dest = root / "Contrast" / ("high" if i % 2 else "low") / rel
        write_image(image if i % 2 else darken(image, rng, "scale", scale=0.4), str(dest))
    return root


@pytest.fixture
def train_args(tiny_dataset, tmp_path, facenet_file, retinaface_weights, vgg_file):
    """Arguments of a quick run (128x128, CPU, no workers, NCHW: not timed for the faster layout, so that runs
    compared with each other train in the same one); the caller adds its own, the last of a flag counting."""
    def make(*extra, ckpt="ckpt"):
        return ["--dataset_root", str(tiny_dataset), "--contrast_positive_path", str(tiny_dataset / "Contrast/high"),
                "--contrast_negative_path", str(tiny_dataset / "Contrast/low"), "--checkpoint_root", str(tmp_path / ckpt),
                "--log_path", str(tmp_path / "log/train.txt"), "--database_root", str(tmp_path / "database"),
                "--encoding_root", str(tmp_path / "encoding"), "--facenet_checkpoint", str(facenet_file),
                "--retinaface_checkpoint", str(retinaface_weights), "--vgg_checkpoint", str(vgg_file),
                "--crop_size", "128", "--num_workers", "0", "--device", "cpu", "--memory_format", "contiguous", *extra]
    return make
