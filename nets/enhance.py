"""The Low-FaceNet enhancement network (Retinex style): predicts an illumination map i, returns r = x / i."""
import statistics

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.images import uint8_images
from utils.runtime import autocast, timed, to_device


def _conv(cin, cout):
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=True)


class EnhanceNet(nn.Module):
    """Input x in [0,1], Bx3xHxW of any size; forward returns (r, i) = (enhanced, illumination)."""

    def __init__(self):
        super().__init__()
        self.e_conv1 = _conv(3, 64)
        self.e_conv2 = _conv(64, 64)
        self.e_conv3 = _conv(64, 64)
        self.e_conv4 = _conv(128, 64)
        self.e_conv5 = _conv(128, 64)
        self.e_conv6 = _conv(64, 3)
        self.conv = nn.Sequential(_conv(3, 128), _conv(128, 128), nn.ReLU(inplace=True),
                                  _conv(128, 64), _conv(64, 16), _conv(16, 3), nn.Sigmoid())

    def forward(self, x):
        x1 = F.relu(self.e_conv1(x), inplace=True)
        x2 = F.relu(self.e_conv2(x1), inplace=True)
        x3 = F.relu(self.e_conv3(x2), inplace=True)
        x4 = F.relu(self.e_conv4(torch.cat([x2, x3], 1)), inplace=True)
        del x2, x3  # dead activations go at once: the peak memory of inference on large images
        x5 = F.relu(self.e_conv5(torch.cat([x1, x4], 1)), inplace=True)
        del x1, x4
        x6 = F.relu(self.e_conv6(x5), inplace=True)
        del x5
        i = torch.clamp(self.conv(x6) + x, 1e-4, 1)
        r = torch.clamp(x / i, 0, 1)
        return r, i


def init_weights(model, std=0.02):
    """Fresh-training initialization of the published code: every Conv2d weight ~ N(0, std), biases untouched."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
    return model


def training_layout(device, amp=False, size=128, rounds=5):
    """The memory format, torch.channels_last or torch.contiguous_format (NCHW), in which EnhanceNet trains faster
    on this device: forward and backward of a size x size image, timed in both layouts in turn (a few seconds on a
    CPU). It depends on the convolution kernels: on a 2-core AVX-512 EPYC channels_last takes 7 % less time per
    training step; on an EPYC where oneDNN ran its AVX2 kernels, its weight gradient ran at a fifth of NCHW's speed.
    On CUDA it is channels_last without timing: cuDNN's tensor-core convolutions take NHWC, and a step of one small
    image there would time launch overhead, not the convolutions of a training batch."""
    if device.type == "cuda":
        return torch.channels_last
    layouts = (torch.contiguous_format, torch.channels_last)
    models = [EnhanceNet().to(device, memory_format=layout) for layout in layouts]
    images = [torch.rand(1, 3, size, size, device=device).contiguous(memory_format=layout) for layout in layouts]

    def step(model, x):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            r, i = model(x)
        (r.float().mean() + i.float().mean()).backward()
    seconds = [[], []]
    for _ in range(rounds + 1):  # the first round warms up
        for k in range(2):
            seconds[k].append(timed(lambda: step(models[k], images[k]), device)[1])
    medians = [statistics.median(s[1:]) for s in seconds]
    return layouts[medians.index(min(medians))]


RECEPTIVE_RADIUS = 11  # eleven 3x3 convolutions: an output pixel sees 11 pixels each way


def tiles(h, w, tile, halo=RECEPTIVE_RADIUS):
    """The tiles of an h x w image, in order: (output block (y0, y1, x0, x1), window (top, left, height, width)).
    Each block of tile x tile output pixels is cut from a window `halo` pixels larger on every side that is not
    the image's border; all windows have the same size (those at the far borders reach further in), so every tile
    reuses the memory of the one before."""
    wh, ww = min(h, tile + 2 * halo), min(w, tile + 2 * halo)
    return [((y0, min(y0 + tile, h), x0, min(x0 + tile, w)),
             (min(max(y0 - halo, 0), h - wh), min(max(x0 - halo, 0), w - ww), wh, ww))
            for y0 in range(0, h, tile) for x0 in range(0, w, tile)]


@torch.inference_mode()
def enhance(model, x, tile=None, halo=RECEPTIVE_RADIUS):
    """Enhanced image r of a Bx3xHxW [0,1] batch, computed in channels_last (the faster layout of this network's
    inference on CPUs and GPUs). With `tile`, images larger than tile x tile go through in tiles (`tiles`): with
    `halo` >= the receptive radius, the result equals the whole-image result while memory stays bounded."""
    assert halo >= RECEPTIVE_RADIUS, f"halo must be at least {RECEPTIVE_RADIUS}"
    x = x.contiguous(memory_format=torch.channels_last)
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return model(x)[0]
    out = torch.empty_like(x)
    for (y0, y1, x0, x1), (top, left, wh, ww) in tiles(h, w, tile, halo):
        r = model(x[..., top:top + wh, left:left + ww])[0]
        out[..., y0:y1, x0:x1] = r[..., y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _as_float(uint8):
    """BxHxWx3 uint8 -> Bx3xHxW float in [0,1], channels_last (the layout `enhance` computes in)."""
    return uint8.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def enhance_uint8_batch(model, x, tile=None, progress=None):
    """BxHxWx3 uint8 batch -> its enhanced BxHxWx3 uint8 batch on the same device, rounded as torchvision's
    save_image rounds (utils.images.uint8_images). An image larger than tile x tile goes through in tiles
    (`tiles`), each converted from and back to uint8 on its own: the memory an image needs beyond its tile's is
    3 bytes per pixel in and 3 out, where the whole image in float would take 12 of each. progress: called with
    (tiles done, tiles) after each tile."""
    h, w = x.shape[1:3]
    if tile is None or (h <= tile and w <= tile):
        return uint8_images(model(_as_float(x))[0].float())
    out = torch.empty_like(x)
    parts = tiles(h, w, tile)
    for done, ((y0, y1, x0, x1), (top, left, wh, ww)) in enumerate(parts, 1):
        r = model(_as_float(x[:, top:top + wh, left:left + ww]))[0]
        out[:, y0:y1, x0:x1] = uint8_images(r[..., y0 - top:y1 - top, x0 - left:x1 - left].float())
        if progress:
            progress(done, len(parts))
    return out


def enhance_uint8(model, images, device, tile=None, precision="tf32", progress=None):
    """test.py's enhancement of a list of HxWx3 uint8 arrays: yields (indices into `images`, KxHxWx3 uint8 tensor on
    `device`) per image size. The images of one size go to the device as uint8 in one copy (4x less than float),
    through `enhance_uint8_batch` in one batch (bf16 autocast with precision bf16), and back to uint8 there.
    progress: see enhance_uint8_batch."""
    by_size = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.shape, []).append(i)
    for index in by_size.values():
        batch = images[index[0]][None] if len(index) == 1 else np.stack([images[i] for i in index])  # no copy of one
        x = to_device(torch.from_numpy(batch), device)
        with autocast(device, precision):
            r = enhance_uint8_batch(model, x, tile, progress)
        yield index, r.contiguous()
