"""RetinaFace with a MobileNetV1 x0.25 backbone (biubug6 / bubbliiiing Pytorch_Retinaface layout) and the
face detector of the published Low-FaceNet code: letterbox to 640, priors, decode, confidence, NMS."""
import math

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import nms

import nets
from utils.runtime import parallel_map, start_to_host, to_host


MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
MEAN = (104.0, 117.0, 123.0)  # BGR means, subtracted from RGB data as the published code does

# -----------------------------------------------------------------------------
# network


def conv_bn(cin, cout, stride=1, leaky=0.0, k=3):
    """Conv (no bias) - BN - LeakyReLU; k=3 with padding 1 or k=1 without."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(leaky, inplace=True))


def conv_bn_no_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


def conv_dw(cin, cout, stride, leaky=0.1):
    """Depthwise 3x3 - BN - LeakyReLU - pointwise 1x1 - BN - LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(leaky, inplace=True))


class MobileNetV1(nn.Module):
    """MobileNetV1 x0.25 trunk; forward returns the stage1/2/3 outputs (64/128/256 channels, strides 8/16/32)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 8, 2, leaky=0.1), conv_dw(8, 16, 1), conv_dw(16, 32, 2),
                                    conv_dw(32, 32, 1), conv_dw(32, 64, 2), conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x):
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return c1, c2, self.stage3(c2)


class FPN(nn.Module):
    def __init__(self, in_channels=(64, 128, 256), out_channels=64, leaky=0.1):
        super().__init__()
        self.output1 = conv_bn(in_channels[0], out_channels, leaky=leaky, k=1)
        self.output2 = conv_bn(in_channels[1], out_channels, leaky=leaky, k=1)
        self.output3 = conv_bn(in_channels[2], out_channels, leaky=leaky, k=1)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats):
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return o1, o2, o3


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 and 7x7 (stacked 3x3) branches, concatenated, ReLU."""

    def __init__(self, cin=64, cout=64, leaky=0.1):
        super().__init__()
        self.conv3X3 = conv_bn_no_relu(cin, cout // 2)
        self.conv5X5_1 = conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(cout // 4, cout // 4)
        self.conv7X7_2 = conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(cout // 4, cout // 4)

    def forward(self, x):
        c5_1 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], 1))


class Head(nn.Module):
    """1x1 conv predicting `per_anchor` numbers for each of 2 anchors; output BxN x per_anchor."""

    def __init__(self, per_anchor, cin=64, anchors=2):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)

    def forward(self, x):
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """Input: Bx3xHxW, RGB 0..255 minus MEAN. Output (loc Bx Nx4, conf BxNx2 after softmax, landms BxNx10)
    over the N priors of `priors((H, W))`, as the published network in its test phase."""

    def __init__(self):
        super().__init__()
        self.body = MobileNetV1()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.ClassHead = nn.ModuleList([Head(2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([Head(4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([Head(10) for _ in range(3)])

    def forward(self, x):
        p1, p2, p3 = self.fpn(self.body(x))
        feats = (self.ssh1(p1), self.ssh2(p2), self.ssh3(p3))
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], 1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], 1)
        landms = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], 1)
        return loc, F.softmax(conf, dim=-1), landms

# -----------------------------------------------------------------------------
# priors and decoding (SSD box coding)


def priors(size):
    """Nx4 prior boxes (cx, cy, w, h), normalized to the (H, W) input, in the order of the network's outputs."""
    h, w = size
    out = []
    for step, min_sizes in zip(STEPS, MIN_SIZES):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        cy, cx = torch.meshgrid((torch.arange(fh, dtype=torch.float64) + 0.5) * step / h,
                                (torch.arange(fw, dtype=torch.float64) + 0.5) * step / w, indexing="ij")
        m = torch.tensor(min_sizes, dtype=torch.float64)  # the anchor index varies fastest
        cx, cy = cx[..., None].expand(-1, -1, len(m)), cy[..., None].expand(-1, -1, len(m))
        out.append(torch.stack([cx, cy, (m / w).expand_as(cx), (m / h).expand_as(cy)], -1).reshape(-1, 4))
    return torch.cat(out).float()  # computed in float64 and rounded once, like torch.Tensor(list of floats)


def decode(loc, priors, variances=VARIANCES):
    """...x4 offsets -> (x1, y1, x2, y2) normalized boxes."""
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    x1y1 = centre - size / 2
    return torch.cat([x1y1, x1y1 + size], -1)


def decode_landm(pre, priors, variances=VARIANCES):
    """...x10 offsets -> 5 normalized landmarks (x, y), relative to the prior centre."""
    pre = pre.unflatten(-1, (5, 2))
    return (priors[:, None, :2] + pre * variances[0] * priors[:, None, 2:]).flatten(-2)

# -----------------------------------------------------------------------------
# detector


class FaceDetector:
    """Letterbox to size x size, one forward per batch, confidence threshold, NMS, back to original pixels.

    The network and the confidence threshold run on the device; the candidates above the threshold (at most
    `max_candidates` per image, in the network's order) come to the host in one copy per batch, where NMS and the
    mapping back to pixels run as the published code's did. A GPU then waits for the host once per batch (not
    three times per image); an image with more candidates than `max_candidates` (none of the test photos has
    more than 170) costs one more copy, and the result is the same."""

    def __init__(self, model, device="cpu", confidence=0.5, nms_iou=0.3, size=640, max_candidates=2048):
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()  # faster on CPUs and GPUs
        self.confidence, self.nms_iou, self.size, self.max_candidates = confidence, nms_iou, size, max_candidates
        self.priors = priors((size, size)).to(self.device)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)

    def _fit(self, h, w):
        """Letterboxed (nh, nw) as the published code: int() of the scaled size, at least 1 (a 2000x2 image)."""
        s = min(self.size / w, self.size / h)
        return max(1, int(h * s)), max(1, int(w * s))

    def preprocess(self, images):
        """(Bx3xSxS float32 network input on self.device, [(h, w)] original sizes).

        images: a list of HxWx3 RGB arrays (uint8 or float, 0..255), resized with cv2 (bilinear) in threads into
        one batch that goes to the device without waiting, or a Bx3xHxW float tensor in 0..255, resized with
        F.interpolate (bilinear, the same as cv2 here)."""
        S = self.size
        if isinstance(images, torch.Tensor):
            x = images.detach().to(self.device, torch.float32)
            b, _, h, w = x.shape
            nh, nw = self._fit(h, w)
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
            top, left = (S - nh) // 2, (S - nw) // 2
            return F.pad(x, (left, S - nw - left, top, S - nh - top), value=128.0) - self.mean, [(h, w)] * b
        batch = torch.empty(len(images), S, S, 3, pin_memory=self.device.type == "cuda")  # filled in threads

        def paste(k):
            img = np.asarray(images[k], dtype=np.float32)
            h, w = img.shape[:2]
            nh, nw = self._fit(h, w)
            canvas = batch[k].numpy()
            canvas.fill(128.0)
            top, left = (S - nh) // 2, (S - nw) // 2
            canvas[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            return h, w
        shapes = parallel_map(paste, range(len(images)))
        return batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2) - self.mean, shapes

    def detect(self, images):
        """One Nx15 float64 CPU tensor per image: x1, y1, x2, y2, score, 5 landmarks (x, y), original pixels,
        score >= confidence, after NMS, sorted by score (descending)."""
        if len(images) == 0:
            return []
        return self.finish(self.start(images))

    @torch.no_grad()
    def start(self, images):
        """Queues the detection of a non-empty batch and the candidates' copy to the host, and returns at once: a
        handle for `finish`. On a GPU the host can queue more work in between, which the copy does not wait for."""
        batch, shapes = self.preprocess(images)
        loc, conf, landms = (t.float() for t in self.model(batch))
        dets = torch.cat([decode(loc, self.priors), conf[..., 1:], decode_landm(landms, self.priors)], -1)
        above = dets[..., 4] >= self.confidence
        first = torch.argsort((~above).to(torch.uint8), dim=1, stable=True)[:, :self.max_candidates]  # kept ones first
        candidates = dets.gather(1, first[..., None].expand(-1, -1, dets.shape[-1]))
        host, wait = start_to_host(torch.cat([above.sum(1, keepdim=True).to(dets.dtype), candidates.flatten(1)], 1))
        return dets, host, wait, shapes

    def finish(self, started):
        """The detections (as `detect`) of a batch `start`ed: waits for the copy, then NMS and the mapping back to
        the original pixels on the host."""
        dets, host, wait, shapes = started
        wait()
        out = []
        for k, (row, (h, w)) in enumerate(zip(host, shapes)):
            count = int(row[0])
            if count <= self.max_candidates:
                d = row[1:].view(-1, dets.shape[-1])[:count]
            else:  # all of this image's rows, selected on the host
                d = to_host(dets[k])
                d = d[d[:, 4] >= self.confidence]
            d = d[nms(d[:, :4], d[:, 4], self.nms_iou)].double()
            out.append(self._unletterbox(d, h, w))
        return out

    def _unletterbox(self, d, h, w):
        """Normalized letterbox coordinates -> original pixels. As the published retinaface_correct_boxes,
        the offset uses the unrounded scaled size (not the int() size the image was resized to)."""
        s = min(self.size / w, self.size / h)
        xy = torch.cat([d[:, :4], d[:, 5:]], 1).unflatten(1, (7, 2)) * self.size
        xy[..., 0] -= (self.size - w * s) / 2
        xy[..., 1] -= (self.size - h * s) / 2
        xy = (xy / s).flatten(1)
        return torch.cat([xy[:, :4], d[:, 4:5], xy[:, 4:]], 1)


def biggest_face(dets):
    """The row of `dets` (Nx15) whose box has the biggest integer area, or None when there is none.
    Area = (int(x2) - int(x1)) * (int(y2) - int(y1)), int() truncating as Python's; on a tie the first row
    (the higher score) wins; a box of area <= 0 is never picked."""
    if len(dets) == 0:
        return None
    c = torch.trunc(dets[:, :4])
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    i = int(torch.argmax(area))  # first maximum
    return dets[i] if area[i] > 0 else None


def load_retinaface(path, device="cpu", **detector_kwargs):
    """FaceDetector over the published Retinaface_mobilenet0.25.pth (a bare state dict, strict)."""
    return FaceDetector(nets.load("retinaface", path), device, **detector_kwargs)
