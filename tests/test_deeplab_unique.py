"""Face parser (DeepLabV3+ MobileNetV2) parity and loading; UNIQUE quality model format, loading and scoring."""
import math

import pytest
import torch

from conftest import assert_close, load_manifest, load_parity, parity_weights
from nets.deeplab import IMAGENET_MEAN, IMAGENET_STD, deeplabv3plus_mobilenet, load_deeplab, parse_faces
from nets.unique import UNIQUE, bilinear_pool, load_unique, unique_score
from utils.checkpoint import CheckpointError


def _shapes(state, prefix=""):
    return {prefix + k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def seg_ref():
    ref = load_parity("segmentation")
    return ref, parity_weights(deeplabv3plus_mobilenet(), "deeplab").eval()


def test_deeplab_state_dict_matches_manifest():
    assert _shapes(deeplabv3plus_mobilenet(num_classes=11, output_stride=16).state_dict()) == \
        load_manifest("deeplabv3plus_mobilenet_lapa")


def test_deeplab_logits_match_published(seg_ref):
    ref, model = seg_ref
    with torch.no_grad():
        logits = model(ref["input_normalized"])
    assert_close(logits, ref["logits"], rtol=1e-4, atol=1e-4, what="deeplab logits")


def test_parse_faces_is_argmax_of_logits_on_imagenet_normalized_input(seg_ref):
    ref, model = seg_ref
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    labels = parse_faces(model, ref["input_normalized"] * std + mean)
    top2 = ref["logits"].topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # pixels whose argmax float noise cannot flip
    assert labels.dtype == torch.long and labels.shape == ref["logits"].shape[:1] + ref["logits"].shape[2:]
    assert clear.float().mean() > 0.99
    assert torch.equal(labels[clear], ref["logits"].argmax(dim=1)[clear])


def test_load_deeplab_reads_model_state_container(tmp_path, seg_ref):
    _, published = seg_ref
    weights = published.state_dict()
    model = deeplabv3plus_mobilenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    path = tmp_path / "best_deeplabv3plus_mobilenet_lapa_epoch96.pth"
    torch.save({"cur_itrs": 96, "model_state": weights, "optimizer_state": optimizer.state_dict(),
                "best_score": 0.5}, path)
    loaded = load_deeplab(path, "cpu")
    assert not loaded.training
    for k, v in weights.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_deeplab_rejects_bare_state_dict(tmp_path, seg_ref):
    path = tmp_path / "bare.pth"
    torch.save(seg_ref[1].state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_deeplab(path, "cpu")
    assert str(path) in str(err.value) and "'model_state'" in str(err.value)


def test_unique_state_dict_matches_manifest():
    assert _shapes(UNIQUE().state_dict(), "module.") == load_manifest("unique")


def test_load_unique_reads_dataparallel_file(tmp_path):
    torch.manual_seed(0)
    model = UNIQUE().eval()
    path = tmp_path / "unique.pt"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    loaded = load_unique(path, "cpu")
    assert not loaded.training
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (2, 2)
        assert torch.equal(out, model(x))


def test_bilinear_pool_is_normalized_signed_sqrt_of_mean_outer_product():
    x = torch.randn(2, 512, 3, 4, dtype=torch.float64)
    gram = torch.einsum("bip,bjp->bij", x.flatten(2), x.flatten(2)) / 12
    expected = gram.sign() * (gram.abs() + 1e-8).sqrt()
    expected = expected.flatten(1) / expected.flatten(1).norm(dim=1, keepdim=True)
    assert_close(bilinear_pool(x), expected, rtol=1e-12, atol=1e-14, what="bilinear pooling")
    assert_close(bilinear_pool(x).norm(dim=1), torch.ones(2), what="L2 norm")


def _record_inputs(model):
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    return shapes


def test_unique_score_shrinks_shorter_side_to_768():
    torch.manual_seed(0)
    model = UNIQUE().eval()
    shapes = _record_inputs(model)
    score = unique_score(model, torch.rand(3, 1000, 800), "cpu")
    assert isinstance(score, float) and math.isfinite(score)
    assert shapes == [(1, 3, 960, 768)]


def test_unique_score_is_first_output_and_deterministic():
    torch.manual_seed(0)
    model = UNIQUE().eval()
    shapes = _record_inputs(model)
    image = torch.rand(1, 3, 64, 900)  # one side below 768: scored at its own size
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((image - mean) / std)[0, 0].item()
    assert unique_score(model, image, "cpu") == unique_score(model, image[0], "cpu") == pytest.approx(expected, rel=1e-6)
    assert shapes == [(1, 3, 64, 900)] * 3
