"""The training losses of Low-FaceNet (SPEC section 3) and the objective that combines them.

Every mean is taken over the whole global batch (`global_mean`): under torchrun the published terms, which are
ratios and products of means and a BxB broadcast rather than means over images, then have exactly the value
and gradient of one process holding the whole batch. In a single process it is a plain mean. Each term is
computed in float32, also under bf16 autocast.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.distributed import global_sum, world_size

# Published weights of each term in the training objective.
WEIGHTS = {"contrast_feature": 0.62, "contrast_brightness": 0.22, "perceptual": 1.0, "color": 0.05,
           "smooth": 0.65, "seg_brightness": 1.0, "face": 1.0}
CONTRAST_TAP_WEIGHTS = (1 / 32, 1 / 16, 1 / 8)  # relu1_2, relu2_2, relu3_3
SMOOTH_OFFSETS = ((1, 0), (0, 1), (1, 1), (1, -1), (2, 0), (0, 2), (2, 1), (2, -1), (1, 2), (1, -2), (2, 2), (2, -2))
NUM_CLASSES = 11


def global_mean(x):
    """Mean of x's elements over all processes (differentiable); x.mean() in a single process. Every process
    holds the same number of elements (equal batches: the sampler and the loader drop the last, uneven ones)."""
    return global_sum(x.sum()) / (x.numel() * world_size())


def global_means(sums_and_sizes):
    """[global_mean(x) for x in tensors], given as (x.sum(), x.numel()) pairs, in one collective: under torchrun the
    sums go to the other ranks stacked (one all-reduce forward, one backward, instead of one per mean)."""
    sums, sizes = zip(*sums_and_sizes)
    world = world_size()
    return [s / (size * world) for s, size in zip(global_sum(torch.stack(sums)).unbind(0), sizes)]


def _sum_and_size(x):
    return x.sum(), x.numel()


def contrast_feature_loss(a_feats, p_feats, n_feats):
    """Sum over taps of w * L1(a, p) / (L1(a, n) + 1e-7); positives/negatives carry no gradient."""
    sums = []
    for a, p, n in zip(a_feats, p_feats, n_feats):
        a, p, n = a.float(), p.detach().float(), n.detach().float()
        sums += [_sum_and_size((a - p).abs()), _sum_and_size((a - n).abs())]
    means = global_means(sums)
    loss = 0.0
    for k, w in enumerate(CONTRAST_TAP_WEIGHTS[:len(means) // 2]):
        loss = loss + w * means[2 * k] / (means[2 * k + 1] + 1e-7)
    return loss


def contrast_brightness_loss(enhanced, positives, negatives):
    """mean|m(a) - m(p)| / (mean|m(a) - m(n)| + 1e-7) with m the channel mean (Bx1xHxW)."""
    m = enhanced.float().mean(1, keepdim=True)
    mp, mn = positives.float().mean(1, keepdim=True), negatives.float().mean(1, keepdim=True)
    to_positive, to_negative = global_means([_sum_and_size((m - mp).abs()), _sum_and_size((m - mn).abs())])
    return to_positive / (to_negative + 1e-7)


def perceptual_loss(input_relu4_3, enhanced_relu4_3):
    """MSE between relu4_3 features of the low-light input and of the enhanced image."""
    return global_mean((enhanced_relu4_3.float() - input_relu4_3.float()).pow(2))


def gaussian_kernel_1d(size=21, nsig=3.0):
    """Factor g of the published 2-D kernel: that kernel, the sqrt of the outer product of the normal-CDF
    differences k normalized to sum 1, is exactly outer(g, g) with g = sqrt(k) / sum(sqrt(k))."""
    interval = (2 * nsig + 1.0) / size
    xs = torch.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, size + 1, dtype=torch.float64)
    cdf = torch.tensor([0.5 * (1 + math.erf(x / math.sqrt(2))) for x in xs.tolist()], dtype=torch.float64)
    g = torch.sqrt(cdf[1:] - cdf[:-1])
    return (g / g.sum()).float()


class ColorLoss(nn.Module):
    """MSE of the blurred enhanced image and the blurred positives, as the published 3x3x21x21 convolution.

    That weight holds the same kernel in every slot (no groups), so each output channel is the blur of the
    channel sum, and the kernel is separable (see gaussian_kernel_1d): by linearity the loss is
    mean(blur(sum_c(enhanced - positives))^2), blurred by a 1x21 and a 21x1 pass with zero padding 10,
    the same value with 1/95 of the published arithmetic.
    """

    def __init__(self, size=21):
        super().__init__()
        g = gaussian_kernel_1d(size)
        self.register_buffer("row", g.view(1, 1, 1, size), persistent=False)
        self.register_buffer("column", g.view(1, 1, size, 1), persistent=False)

    def forward(self, enhanced, positives):
        pad = self.row.shape[-1] // 2
        with torch.autocast(enhanced.device.type, enabled=False):
            d = (enhanced.to(self.row.dtype) - positives.to(self.row.dtype)).sum(1, keepdim=True)  # float32 under amp
            d = F.conv2d(F.conv2d(d, self.row, padding=(0, pad)), self.column, padding=(pad, 0))
            return global_mean(d.pow(2))


def _shifted_pair(x, dy, dx):
    """(x[q + o], x[q]) over all q with q and q + o inside the image, o = (dy, dx), dy >= 0."""
    h, w = x.shape[-2:]
    x0, x1 = max(0, -dx), w - max(0, dx)
    return x[..., dy:, x0 + dx:x1 + dx], x[..., :h - dy, x0:x1]


def smooth_loss(input, illumination):
    """Edge-aware smoothness of the illumination over 12 offsets, weights from the RGB low-light input."""
    input, illumination = input.float(), illumination.float()
    sums = []
    for dy, dx in SMOOTH_OFFSETS:
        a, b = _shifted_pair(input, dy, dx)
        w = torch.exp(-0.005 * (a - b).pow(2).sum(1, keepdim=True))  # -1.0/2*0.1*0.1, as published
        ia, ib = _shifted_pair(illumination, dy, dx)
        sums += [_sum_and_size(w), _sum_and_size((ia - ib).abs())]
    means = global_means(sums)
    loss = 0.0
    for k in range(len(SMOOTH_OFFSETS)):
        loss = loss + 2 * means[2 * k] * means[2 * k + 1]
    return loss


def seg_brightness_loss(enhanced, labels, num_classes=NUM_CLASSES):
    """Per-class brightness variance of the published code, without building its BxBxHxW tensor.

    Published: grey Bx1xHxW, t = where(labels == c, grey, 0) broadcast to BxBxHxW (t[j, k] = grey_j where
    image k has class c), d = mean(t), exact zeros of t replaced by d, loss_c = mean((t - d_detached)^2).
    The replaced entries contribute (d - d)^2 = 0 with zero gradient, so with M_c = sum_k [labels_k == c]
    (HxW) and n = B^2 H W: d = sum(sum_j grey_j * M_c) / n and
    loss_c = sum_px M_c * sum_j [grey_j != 0] (grey_j - d)^2 / n, summed over the global batch.
    """
    grey = enhanced.float().mean(1)  # BxHxW
    masks = torch.stack([labels == c for c in range(num_classes)], 1).float()  # BxCxHxW
    with torch.no_grad():
        batch = len(grey) * world_size()
        stats = global_sum(torch.cat([grey.sum(0, keepdim=True), masks.sum(0)]))  # (1+C)xHxW
        grey_sum, class_count = stats[0], stats[1:]
        n = batch * batch * grey.shape[-2] * grey.shape[-1]
        d = (grey_sum * class_count).flatten(1).sum(1) / n  # C
    sq = (grey[:, None] - d[None, :, None, None]).pow(2) * (grey != 0)[:, None]  # BxCxHxW
    return global_sum((sq * class_count[None]).sum()) / n


def color_constancy_loss(enhanced):
    """Colour-constancy term of the published code (switched off in training); per image, Bx1x1x1."""
    mr, mg, mb = enhanced.mean((2, 3), keepdim=True).split(1, dim=1)
    d_rg, d_rb, d_gb = (mr - mg).pow(2), (mr - mb).pow(2), (mb - mg).pow(2)
    return torch.sqrt(d_rg.pow(2) + d_rb.pow(2) + d_gb.pow(2))


class LowFaceNetObjective(nn.Module):
    """The full training objective with the published weights, for any batch size.

    Built once with the frozen VGG16 trunk and (optionally) the face-recognition loss; forward returns
    (total, terms, face_logits): terms maps each term name to its unweighted value (detached);
    face_logits is the BxN cosine-similarity matrix (zero rows where no face was found) or None.
    forward starts the face detection, then runs `features`, `image_terms`, the face loss and `total`; they can also
    be called one by one.
    """

    def __init__(self, vgg, face_loss=None, weights=WEIGHTS):
        super().__init__()
        self.vgg, self.face_loss, self.weights = vgg, face_loss, dict(weights)
        self.color = ColorLoss()

    def features(self, enhanced, input, positives, negatives):
        """VGG taps (enhanced: 4, positives: 3, negatives: 3, input: relu4_3). Each image's trunk is computed once
        and shared by the contrastive and perceptual terms: the enhanced image with gradient to relu4_3;
        positives, negatives and the input together without gradient to relu3_3 (all the contrastive term
        needs), then the input alone on to relu4_3 (the perceptual term)."""
        b = len(enhanced)
        a_feats = self.vgg(enhanced)
        with torch.no_grad():
            ref = self.vgg(torch.cat([positives, negatives, input]), depth=3)
            input_relu4_3 = self.vgg(ref[2][2 * b:], start=3)[0]
        return a_feats, [f[:b] for f in ref], [f[b:2 * b] for f in ref], input_relu4_3

    def image_terms(self, enhanced, illumination, input, positives, negatives, seg_labels, features):
        """Every term but the face loss, from the images and their `features`."""
        a_feats, p_feats, n_feats, input_relu4_3 = features
        return {
            "contrast_feature": contrast_feature_loss(a_feats[:3], p_feats, n_feats),
            "contrast_brightness": contrast_brightness_loss(enhanced, positives, negatives),
            "perceptual": perceptual_loss(input_relu4_3, a_feats[3]),
            "color": self.color(enhanced, positives),
            "smooth": smooth_loss(input, illumination),
            "seg_brightness": seg_brightness_loss(enhanced, seg_labels),
        }

    def total(self, terms):
        return sum(self.weights[k] * v for k, v in terms.items())

    def forward(self, enhanced, illumination, input, positives, negatives, seg_labels, face_labels=None):
        face = self.face_loss is not None and face_labels is not None
        # the face detection and its copy to the host are queued first: on a GPU the host runs NMS and the face
        # choice while the device computes the VGG features and the image terms queued behind them
        detecting = self.face_loss.start_detect(enhanced) if face else None
        features = self.features(enhanced, input, positives, negatives)
        terms = self.image_terms(enhanced, illumination, input, positives, negatives, seg_labels, features)
        face_logits = None
        if face:
            terms["face"], face_logits, _ = self.face_loss(enhanced, face_labels, detecting)
            face_logits = face_logits.detach()
        return self.total(terms), {k: v.detach() for k, v in terms.items()}, face_logits
