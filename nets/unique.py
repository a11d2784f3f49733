"""UNIQUE no-reference image quality (Zhang et al., "Uncertainty-aware blind image quality assessment in the
laboratory and wild", github zwx8981/UNIQUE): BaseCNN with a ResNet-34 backbone and bilinear pooling.

Assumptions, from the UNIQUE code (config backbone='resnet34', representation='BCNN', std_modeling=True):
- the published `unique.pt` is the state dict of `nn.DataParallel(BaseCNN)`: `module.backbone.*` is a
  torchvision ResNet-34 (its unused `fc` included) and `module.fc` is Linear(512*512, 2);
- BaseCNN returns (x[:, 0], softplus(x[:, 1])) = (quality, uncertainty). Here forward returns the raw Bx2
  fc output; the quality score used by Low-FaceNet is the first output, x[:, 0];
- test transform AdaptiveResize(768): an image whose sides are both >= 768 is resized (bilinear) so that
  its shorter side is 768, otherwise it is left as is; then ImageNet mean/std normalization.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.models import resnet34

import nets


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SHORT_SIDE = 768


def bilinear_pool(x, thresh=1e-8):
    """UNIQUE's BCNN: mean outer product over positions, signed sqrt, flatten, L2 normalization."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w)
    x = x.bmm(x.transpose(1, 2)) / (h * w)
    x = x.sign() * torch.sqrt(x.abs() + thresh)
    return F.normalize(x.reshape(b, -1))


class UNIQUE(nn.Module):
    """Input: ImageNet-normalized Bx3xHxW; output: Bx2 (quality, pre-softplus uncertainty)."""

    def __init__(self):
        super().__init__()
        self.backbone = resnet34(weights=None)
        self.fc = nn.Linear(512 * 512, 2)

    def forward(self, x):
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return self.fc(bilinear_pool(x))


def load_unique(path, device="cpu"):
    """The published unique.pt (DataParallel state dict, 'module.' prefix) loaded strictly, on `device`, eval mode."""
    return nets.load("unique", path, device)


@torch.no_grad()
def unique_score(model, image_01, device="cpu"):
    """Quality score (float) of one RGB image in [0,1], 3xHxW or 1x3xHxW.

    Only shrinks: an image with both sides >= 768 gets its shorter side resized to 768 (bilinear, antialiased
    like PIL, aspect kept); smaller images are scored at their own size.
    """
    x = image_01.to(device, torch.float32)
    x = x.unsqueeze(0) if x.dim() == 3 else x
    if min(x.shape[-2:]) >= MAX_SHORT_SIDE:
        x = TF.resize(x, MAX_SHORT_SIDE, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    return model(x)[0, 0].item()
