"""VGG16 trunk (features 0..22) shared by the contrastive and perceptual losses: one pass, four taps."""
import torch
import torch.nn as nn
from torchvision.models import vgg16
from torchvision.models.vgg import cfgs, make_layers

# torchvision's features indices that end each tap (exclusive): relu1_2, relu2_2, relu3_3, relu4_3
TAPS = (4, 9, 16, 23)


class VGGFeatures(nn.Module):
    """Frozen VGG16 features[0:23] in channels_last (the faster layout for its convolutions on CPUs and GPUs).

    forward(x, depth=4, start=0) returns the taps start..depth-1 of [relu1_2, relu2_2, relu3_3, relu4_3]; with
    start > 0, x is the tap start-1 itself, so a trunk stopped at relu3_3 can be continued to relu4_3.
    """

    def __init__(self, features):
        super().__init__()
        self.features = nn.Sequential(*list(features)[:TAPS[-1]])
        for p in self.parameters():
            p.requires_grad_(False)
        self.to(memory_format=torch.channels_last)
        self.eval()

    def forward(self, x, depth=4, start=0):
        bounds, outs = (0,) + TAPS, []
        for tap in range(start, depth):
            for i in range(bounds[tap], bounds[tap + 1]):  # indexing, not slicing: no Sequential built per call
                x = self.features[i](x)
            outs.append(x)
        return outs


def vgg16_trunk():
    """VGGFeatures of a randomly initialised VGG16, built without the 0.4 GB classifier that vgg16() makes."""
    return VGGFeatures(make_layers(cfgs["D"]))


def load_vgg16(path=None, device="cpu"):
    """VGG16 trunk with ImageNet weights: torchvision's own download/cache (TORCH_HOME) by default,
    or a local file (torchvision's full vgg16 state dict, or features.0..22 only) for offline machines."""
    from utils.checkpoint import CheckpointError, check_finite, check_state_dict, read_checkpoint, unwrap_state_dict
    if path is None:
        from torchvision.models import VGG16_Weights
        try:
            model = vgg16(weights=VGG16_Weights.IMAGENET1K_V1)
        except Exception as e:
            raise CheckpointError(
                f"could not get torchvision's ImageNet VGG16 weights ({type(e).__name__}: {str(e)[:120]}); "
                "on an offline machine pass a local file (--vgg_checkpoint vgg16-397923af.pth)") from None
        return VGGFeatures(model.features).to(device)
    trunk = vgg16_trunk()
    try:
        state = unwrap_state_dict(read_checkpoint(path))
    except TypeError:
        raise CheckpointError(f"{path}: expected a bare state dict of torchvision's vgg16") from None
    state = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < TAPS[-1]}
    check_state_dict(trunk, state, f"{path}: expected torchvision's vgg16 state dict (features.0..22)")
    check_finite(state, path)
    trunk.load_state_dict(state)
    return trunk.to(device)
