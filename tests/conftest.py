"""Shared fixtures: the reference folder (published code's outputs) and the shared weights."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE = Path(os.environ.get("LOWFACENET_REFERENCE", ROOT.parent / "shared" / "reference"))
SHARED = REFERENCE.parent
WEIGHTS = SHARED / "weights"
FACES = SHARED / "faces" / "lfw-mini"

torch.use_deterministic_algorithms(False)


def _need(path):
    if not Path(path).exists():
        pytest.skip(f"{path} is absent (set LOWFACENET_REFERENCE to the folder with parity_*.pt and manifests/)")
    return Path(path)


def load_parity(name):
    """The dict stored in reference/parity_<name>.pt."""
    return torch.load(_need(REFERENCE / f"parity_{name}.pt"), map_location="cpu", weights_only=True)


def load_manifest(name):
    """key -> shape of a published checkpoint format."""
    with open(_need(REFERENCE / "manifests" / f"{name}.json")) as f:
        return {k: tuple(v) for k, v in json.load(f)["keys"].items()}


@pytest.fixture(scope="session")
def retinaface_weights():
    return _need(WEIGHTS / "Retinaface_mobilenet0.25.pth")


@pytest.fixture(scope="session")
def lfw_faces():
    return _need(FACES)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what=""):
    """Relative error check of SPEC section 1, with a message naming the quantity."""
    actual = torch.as_tensor(actual).detach().double().cpu()
    expected = torch.as_tensor(expected).detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
