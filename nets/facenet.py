"""FaceNet (bubbliiiing/facenet-pytorch layout): MobileNetV1 x1.0 or Inception-ResNet-v1 -> 128-d unit embedding.

Input: Bx3x160x160 RGB in [0,1], no mean subtraction. Keys follow the published facenet_mobilenet.pth.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import nets


# ---------------------------------------------------------------- MobileNetV1 x1.0 (ReLU6)

def _conv_bn(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


def _conv_dw(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class MobileNetV1(nn.Module):
    """Stages 1..3 of MobileNetV1 x1.0 (the classifier's avg pool and fc are not part of FaceNet)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 32, 2), _conv_dw(32, 64, 1), _conv_dw(64, 128, 2),
                                    _conv_dw(128, 128, 1), _conv_dw(128, 256, 2), _conv_dw(256, 256, 1))
        self.stage2 = nn.Sequential(_conv_dw(256, 512, 2), *[_conv_dw(512, 512, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(512, 1024, 2), _conv_dw(1024, 1024, 1))

    def forward(self, x):
        return self.stage3(self.stage2(self.stage1(x)))


# ---------------------------------------------------------------- Inception-ResNet-v1

class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001, momentum=0.1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1),
                                     BasicConv2d(32, 32, 3, padding=1))
        self.conv2d = nn.Conv2d(96, 256, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1))
        return self.relu(out * self.scale + x)


class Block17(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = nn.Sequential(BasicConv2d(896, 128, 1), BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
                                     BasicConv2d(128, 128, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(256, 896, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1))
        return self.relu(out * self.scale + x)


class Block8(nn.Module):
    def __init__(self, scale=1.0, relu=True):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = nn.Sequential(BasicConv2d(1792, 192, 1), BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
                                     BasicConv2d(192, 192, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(384, 1792, 1)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x):
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1))
        return self.relu(out * self.scale + x)


class Mixed6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1),
                                     BasicConv2d(192, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1),
                                     BasicConv2d(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class InceptionResnetV1(nn.Module):
    """Inception-ResNet-v1 up to block8 (1792 channels)."""

    def __init__(self):
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(scale=0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(scale=0.10) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8(scale=0.20) for _ in range(5)])
        self.block8 = Block8(relu=False)

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x


# ---------------------------------------------------------------- FaceNet

class Backbone(nn.Module):
    """Holds the trunk as `.model`, which gives the published `backbone.model.*` keys."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


BACKBONES = {"mobilenet": (MobileNetV1, 1024), "inception_resnetv1": (InceptionResnetV1, 1792)}


class FaceNet(nn.Module):
    """Embedding network: backbone, global average pool, dropout, Bottleneck (no bias), last_bn, L2 norm."""

    def __init__(self, backbone="mobilenet", dropout_keep_prob=0.5, embedding_size=128):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unsupported FaceNet backbone {backbone!r}; use one of {list(BACKBONES)}")
        trunk, features = BACKBONES[backbone]
        self.backbone = Backbone(trunk())
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.Dropout = nn.Dropout(1 - dropout_keep_prob)
        self.Bottleneck = nn.Linear(features, embedding_size, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_size, eps=0.001, momentum=0.1)

    def forward(self, x):
        x = self.avg(self.backbone(x)).flatten(1)
        x = self.last_bn(self.Bottleneck(self.Dropout(x)))
        return F.normalize(x, p=2, dim=1)


def load_facenet(path, backbone="mobilenet", device="cpu"):
    """FaceNet with the weights of `path` (extra classifier.* keys are dropped), frozen, eval mode, on `device`.

    Parameters do not require gradient, but gradient still flows through the network to its input.
    """
    model = nets.load(f"facenet_{backbone}", path)
    model.requires_grad_(False)
    return model.to(device).eval()
