"""VGG16 trunk (features 0..22) shared by the contrastive and perceptual losses: one pass, four taps."""
import torch.nn as nn
from torchvision.models import vgg16

# torchvision's features indices that end each tap (exclusive): relu1_2, relu2_2, relu3_3, relu4_3
TAPS = (4, 9, 16, 23)


class VGGFeatures(nn.Module):
    """Frozen VGG16 features[0:23]; forward(x) returns [relu1_2, relu2_2, relu3_3, relu4_3] (stopping early with `depth`)."""

    def __init__(self, features):
        super().__init__()
        self.features = nn.Sequential(*list(features)[:TAPS[-1]])
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x, depth=4):
        outs, start = [], 0
        for end in TAPS[:depth]:
            x = self.features[start:end](x)
            outs.append(x)
            start = end
        return outs


def load_vgg16(path=None, device="cpu"):
    """VGG16 trunk with ImageNet weights: torchvision's own download/cache (TORCH_HOME) by default,
    or a local file (torchvision's full vgg16 state dict, or features.0..22 only) for offline machines."""
    from utils.checkpoint import CheckpointError, check_state_dict, read_checkpoint, unwrap_state_dict
    if path is None:
        from torchvision.models import VGG16_Weights
        try:
            model = vgg16(weights=VGG16_Weights.IMAGENET1K_V1)
        except Exception as e:
            raise CheckpointError(
                f"could not get torchvision's ImageNet VGG16 weights ({type(e).__name__}: {str(e)[:120]}); "
                "on an offline machine pass a local file (--vgg_checkpoint vgg16-397923af.pth)") from None
        return VGGFeatures(model.features).to(device)
    trunk = VGGFeatures(vgg16(weights=None).features)
    try:
        state = unwrap_state_dict(read_checkpoint(path))
    except TypeError:
        raise CheckpointError(f"{path}: expected a bare state dict of torchvision's vgg16") from None
    state = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < TAPS[-1]}
    check_state_dict(trunk, state, f"{path}: expected torchvision's vgg16 state dict (features.0..22)")
    trunk.load_state_dict(state)
    return trunk.to(device)
