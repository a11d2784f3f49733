"""Face parsing: DeepLabV3+ with a MobileNetV2 backbone, as in VainF/DeepLabV3Plus-Pytorch (11 LaPa classes).

The module tree reproduces that project's state dict exactly (`backbone.low_level_features.*`,
`backbone.high_level_features.*`, `classifier.*`), so the published
`best_deeplabv3plus_mobilenet_lapa_epoch96.pth` ({'model_state': state_dict, ...}) loads strictly.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

import nets


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fixed_padding(kernel_size, dilation):
    """(left, right, top, bottom) padding that keeps the size of a stride-1 dilated conv."""
    total = kernel_size + (kernel_size - 1) * (dilation - 1) - 1
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class ConvBNReLU(nn.Sequential):
    """Conv (no padding, no bias) + BN + ReLU6."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, dilation=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, kernel_size, stride, 0, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block; the input is padded explicitly for the 3x3 depthwise conv, every conv runs unpadded."""

    def __init__(self, cin, cout, stride, dilation, expand_ratio):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = [ConvBNReLU(cin, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, dilation=dilation, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.input_padding = fixed_padding(3, dilation)

    def forward(self, x):
        out = self.conv(F.pad(x, self.input_padding))
        return x + out if self.use_res_connect else out


def mobilenet_v2_features(output_stride=16):
    """features[0:18] of VainF's MobileNetV2 (the final 1x1 ConvBNReLU to 1280 is dropped by the segmenter).

    Once the running stride reaches `output_stride`, stages use dilation instead of stride; the first
    block of such a stage keeps the previous dilation.
    """
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    features = [ConvBNReLU(3, 32, stride=2)]
    cin, current_stride, dilation = 32, 2, 1
    for t, c, n, s in setting:
        previous_dilation = dilation
        if current_stride == output_stride:
            stride, dilation = 1, dilation * s
        else:
            stride, current_stride = s, current_stride * s
        for i in range(n):
            features.append(InvertedResidual(cin, c, stride if i == 0 else 1,
                                             previous_dilation if i == 0 else dilation, t))
            cin = c
    return features


class MobileNetV2Backbone(nn.Module):
    """low_level_features = features[0:4] (24 ch, stride 4); high_level_features = features[4:18] (320 ch)."""

    def __init__(self, output_stride=16):
        super().__init__()
        features = list(enumerate(mobilenet_v2_features(output_stride)))
        self.low_level_features = nn.Sequential(OrderedDict((str(i), m) for i, m in features[:4]))
        self.high_level_features = nn.Sequential(OrderedDict((str(i), m) for i, m in features[4:]))

    def forward(self, x):
        low = self.low_level_features(x)
        return low, self.high_level_features(low)


def _conv_bn_relu(cin, cout, kernel_size=1, dilation=1):
    return [nn.Conv2d(cin, cout, kernel_size, padding=dilation if kernel_size == 3 else 0, dilation=dilation,
                      bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ASPP(nn.Module):
    """1x1 conv, three 3x3 atrous convs, image pooling (256 ch each); project 1280 -> 256, dropout 0.1."""

    def __init__(self, cin, rates):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(*_conv_bn_relu(cin, 256))] +
                                   [nn.Sequential(*_conv_bn_relu(cin, 256, 3, r)) for r in rates] +
                                   [nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, 256))])
        self.project = nn.Sequential(*_conv_bn_relu(5 * 256, 256), nn.Dropout(0.1))

    def forward(self, x):
        branches = [conv(x) for conv in self.convs[:-1]]
        pooled = self.convs[-1](x)
        branches.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(branches, dim=1))


class DeepLabHeadV3Plus(nn.Module):
    """Low-level project 24 -> 48, ASPP on the high-level map upsampled to stride 4, classifier 304 -> 256 -> classes."""

    def __init__(self, cin, low_level_channels, num_classes, rates):
        super().__init__()
        self.project = nn.Sequential(*_conv_bn_relu(low_level_channels, 48))
        self.aspp = ASPP(cin, rates)
        self.classifier = nn.Sequential(*_conv_bn_relu(304, 256, 3, 1), nn.Conv2d(256, num_classes, 1))

    def forward(self, low, high):
        low = self.project(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))


class DeepLabV3Plus(nn.Module):
    """Input: ImageNet-normalized Bx3xHxW; output: logits BxCxHxW (bilinear upsampling, align_corners False)."""

    def __init__(self, num_classes=11, output_stride=16):
        super().__init__()
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.backbone = MobileNetV2Backbone(output_stride)
        self.classifier = DeepLabHeadV3Plus(320, 24, num_classes, rates)

    def forward(self, x):
        logits = self.classifier(*self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplabv3plus_mobilenet(num_classes=11, output_stride=16):
    """VainF's network/modeling.py deeplabv3plus_mobilenet, without a pretrained backbone."""
    return DeepLabV3Plus(num_classes, output_stride)


def load_deeplab(path, device="cpu"):
    """The published LaPa parser ({'model_state': state_dict, ...}) loaded strictly, on `device`, eval mode."""
    return nets.load("deeplab", path, device)


@torch.no_grad()
def parse_faces(model, images_01):
    """Bx3xHxW RGB in [0,1] -> BxHxW long labels (ImageNet normalization, argmax over classes)."""
    x = images_01.to(next(model.parameters()).device, torch.float32)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return model((x - mean) / std).argmax(dim=1)
