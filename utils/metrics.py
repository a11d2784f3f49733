"""Image quality: PSNR and SSIM as the published code computes them, mean brightness, streaming averages and the
published recognition average."""
import math

import torch
import torch.nn.functional as F


PSNR_CAP = 100.0  # dB: identical images (MSE 0) count as 100 dB, not infinity, as common toolkits cap it


def psnr(pred, gt):
    """10 log10(1 / MSE) on [0,1] tensors (the whole tensor's MSE), at most PSNR_CAP (identical images)."""
    mse = F.mse_loss(pred.float(), gt.float())
    return (10 * torch.log10(1.0 / mse)).clamp(max=PSNR_CAP)


def brightness(images):
    """Mean luma (0.299 R + 0.587 G + 0.114 B) of a batch of [0,1] images, Bx3xHxW, as a tensor on their device
    (weights as Python numbers: nothing is uploaded, so the host does not wait for a GPU)."""
    images = images.float()
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).mean()


def _gaussian_window(size=11, sigma=1.5):
    g = torch.tensor([math.exp(-((x - size // 2) ** 2) / (2 * sigma ** 2)) for x in range(size)])
    g = g / g.sum()
    return torch.outer(g, g)


_WINDOW = _gaussian_window()


def ssim(pred, gt):
    """SSIM with an 11x11 Gaussian window (sigma 1.5), per channel, zero padding 5, mean over the whole map."""
    pred, gt = pred.float(), gt.float()
    c = pred.shape[1]
    w = _WINDOW.to(pred.device).expand(c, 1, *_WINDOW.shape)
    blur = lambda x: F.conv2d(x, w, padding=5, groups=c)
    mu1, mu2 = blur(pred), blur(gt)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = blur(pred * pred) - mu1_sq, blur(gt * gt) - mu2_sq, blur(pred * gt) - mu12
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))).mean()


class Average:
    """Streaming mean: update(value), then get_results()."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, value, n=1):
        self.total += float(value) * n
        self.count += n

    def get_results(self):
        return self.total / self.count if self.count else float("nan")


def batch_mean_accuracy(hits, batch_size=4):
    """The published eval.py's recognition figure, in %: the mean over consecutive batches of `batch_size` (the
    last one smaller) of each batch's accuracy, from per-image hits (bools) in the published loader's order. It
    differs from the per-image accuracy when the last batch is smaller."""
    batches = [hits[i:i + batch_size] for i in range(0, len(hits), batch_size)]
    if not batches:
        return math.nan
    total = sum(torch.tensor(b, dtype=torch.float32).mean().item() for b in batches)  # as published: float32
    return total / len(batches) * 100
