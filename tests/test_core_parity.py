"""Parity of the enhancement network, every loss term and its gradient, and the metrics with the published code."""
import copy

import pytest
import torch

from conftest import assert_close, load_manifest, load_parity, parity_weights
from parity_weights import formula_value
from nets import losses
from nets.enhance import EnhanceNet
from nets.vgg import VGGFeatures
from utils.metrics import psnr, ssim
from torchvision.models import vgg16


def test_enhance_state_dict_matches_manifest():
    model = EnhanceNet()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == load_manifest("lowfacenet_enhance")


def test_enhance_outputs_match_published():
    ref = load_parity("enhance")
    model = parity_weights(EnhanceNet(), "enhance")
    with torch.no_grad():
        r, i = model(ref["input"])
    assert_close(r, ref["r"], rtol=1e-5, atol=1e-6, what="r")
    assert_close(i, ref["i"], rtol=1e-5, atol=1e-6, what="i")


@pytest.fixture(scope="module")
def loss_ref():
    ref = load_parity("losses")
    return ref, parity_weights(VGGFeatures(vgg16(weights=None).features), "vgg16")


def test_vgg_trunk_matches_manifest():
    vgg = VGGFeatures(vgg16(weights=None).features)
    assert {k: tuple(v.shape) for k, v in vgg.state_dict().items()} == load_manifest("vgg16_features_0_22")


def _term(name, ref, vgg, x):
    """Value of one loss term as a function of x (the tensor the stored gradient is taken against)."""
    if name == "contrast_feature":
        return losses.contrast_feature_loss(vgg(x, 3), vgg(ref["positives"], 3), vgg(ref["negatives"], 3))
    if name == "contrast_brightness":
        return losses.contrast_brightness_loss(x, ref["positives"], ref["negatives"])
    if name == "perceptual":
        return losses.perceptual_loss(vgg(ref["input"])[3], vgg(x)[3])
    if name == "color":
        return losses.ColorLoss().to(x.dtype)(x, ref["positives"])
    if name == "smooth":
        return losses.smooth_loss(ref["input"], x)
    if name == "seg_brightness":
        return losses.seg_brightness_loss(x, ref["seg_labels"])
    if name == "color_consistency":
        return losses.color_constancy_loss(x).mean()
    raise KeyError(name)


@pytest.mark.parametrize("name", ["contrast_feature", "contrast_brightness", "perceptual", "color", "smooth",
                                  "seg_brightness", "color_consistency"])
def test_loss_value_and_gradient_match_published(loss_ref, name):
    ref, vgg = loss_ref
    with torch.no_grad():
        value = _term(name, ref, vgg, ref["illumination"] if name == "smooth" else ref["enhanced"])
    assert_close(value, ref["values"][name], rtol=1e-4 if name in ("contrast_feature", "perceptual") else 1e-5,
                 atol=0, what=f"{name} value")
    # The gradient in float64: the L1 terms' gradients are signs of feature differences, and with the parity weights
    # hundreds of those differences lie within float32 rounding of 0, where any CPU's kernels may flip them (1 % of
    # the largest gradient). The published outputs match the float64 computation to float32 rounding.
    ref = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in ref.items()}
    x = (ref["illumination"] if name == "smooth" else ref["enhanced"]).clone().requires_grad_(True)
    _term(name, ref, copy.deepcopy(vgg).double(), x).backward()
    assert_close(x.grad, ref["grads"][name], scale=1e-5, what=f"{name} gradient")


def test_stored_reference_covers_every_term():
    ref = load_parity("losses")
    assert set(ref["values"]) == set(ref["grads"]) == {"contrast_feature", "contrast_brightness", "perceptual", "color",
                                                       "smooth", "seg_brightness", "color_consistency"}


def test_objective_matches_sum_of_weighted_terms(loss_ref):
    ref, vgg = loss_ref
    objective = losses.LowFaceNetObjective(vgg)
    total, terms, face_logits = objective(ref["enhanced"], ref["illumination"], ref["input"], ref["positives"],
                                          ref["negatives"], ref["seg_labels"])
    assert face_logits is None
    for name, value in terms.items():
        assert_close(value, ref["values"][name], rtol=1e-4, atol=0, what=name)
    expected = sum(losses.WEIGHTS[k] * ref["values"][k] for k in terms)
    assert_close(total, expected, rtol=1e-5, atol=0, what="total")


def test_metrics_match_published():
    ref = load_parity("metrics")
    assert_close(psnr(ref["pred"], ref["gt"]), ref["psnr"], rtol=1e-5, atol=0, what="psnr")
    assert_close(ssim(ref["pred"], ref["gt"]), ref["ssim"], rtol=1e-5, atol=0, what="ssim")


def test_parity_weights_formula_matches_its_probe():
    """tests/parity_weights.py against parity_weights_probe.pt: float64 sum, first and last value of every entry."""
    probe = load_parity("weights_probe")
    shapes = {"enhance": load_manifest("lowfacenet_enhance"), "facenet": load_manifest("facenet_mobilenet"),
              "deeplab": load_manifest("deeplabv3plus_mobilenet_lapa"),
              "vgg16.features": {k: tuple(v.shape) for k, v in vgg16(weights=None).features.state_dict().items()}}
    for tag, entries in shapes.items():
        assert set(probe[tag]) == {k for k in entries if not k.endswith("num_batches_tracked")}, tag
        for key, (total, first, last) in probe[tag].items():
            values = torch.from_numpy(formula_value(f"{tag}.{key}", entries[key], int(probe["seed"]))).float().double()
            assert (values.flatten()[0], values.flatten()[-1]) == (first, last), f"{tag}.{key}"
            assert_close(values.sum(), total, rtol=1e-12, atol=1e-12, what=f"{tag}.{key} sum")
