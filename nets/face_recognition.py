"""Face recognition of Low-FaceNet: eye-line alignment, FaceNet embedding, cosine similarity to a face database.

Two crop paths, as the published code:
- align_face_numpy: the face database (uint8 image, cv2 rotation and letterbox);
- align_faces: the face loss and eval.py's identification (crop of the enhanced tensor itself, torchvision rotation
  and resize), so that gradient flows from the recognition logits back to the enhanced image.
"""
import math

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import _get_inverse_affine_matrix

from nets.losses import global_mean
from nets.retinaface import biggest_face
from utils.runtime import parallel_map, to_device, to_host

FACE_SIZE = 160


def _floats(det_row):
    """A detection row (tensor or array, x1, y1, x2, y2, score, 5 landmarks) as a list of Python floats."""
    return torch.as_tensor(det_row).detach().cpu().double().reshape(-1).tolist()


def face_angle(landmarks):
    """Eye-line angle in degrees, counter-clockwise positive (cv2 / torchvision convention).

    landmarks: (left eye x, y, right eye x, y, ...) flat or as rows of (x, y); only the first two points are used.
    x = lx - rx, y = ly - ry, angle = atan(y / x), 0 when x == 0. Translation-invariant, so pixel
    coordinates of the whole image and of the crop give the same angle.
    """
    lx, ly, rx, ry = _floats(landmarks)[:4]
    x, y = lx - rx, ly - ry
    return 0.0 if x == 0 else math.atan(y / x) * 180 / math.pi


def _letterbox_size(h, w, size=FACE_SIZE):
    """(nh, nw): the aspect-kept size inside size x size, int() as the published letterbox, at least 1."""
    s = min(size / w, size / h)
    return max(1, int(h * s)), max(1, int(w * s))


def align_face_numpy(image_rgb_uint8, det_row, size=FACE_SIZE):
    """1x3xSxS float32 FaceNet input of the face `det_row` of an HxWx3 RGB uint8 image (database path).

    As the published encoder: the box is rounded to the nearest pixel (clipped at 0), the crop rotated in
    float32 about (w//2, h//2) (cv2 bilinear, black border), truncated to uint8, letterboxed with cv2.resize
    onto grey 128, divided by 255. None when the rounded box holds no pixel (a sliver of a face at a border).
    """
    row = _floats(det_row)
    x1, y1, x2, y2 = (max(0, round(v)) for v in row[:4])
    crop = np.asarray(image_rgb_uint8)[y1:y2, x1:x2].astype(np.float32)
    h, w = crop.shape[:2]
    if h == 0 or w == 0:
        return None
    rotation = cv2.getRotationMatrix2D((w // 2, h // 2), face_angle(row[5:]), 1)
    crop = cv2.warpAffine(crop, rotation, (w, h)).astype(np.uint8)
    nh, nw = _letterbox_size(h, w, size)
    canvas = np.full((size, size, 3), 128.0)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = cv2.resize(crop, (nw, nh))
    return torch.from_numpy((canvas / 255).transpose(2, 0, 1).copy()).float()[None]


def align_faces(images, det_rows, size=FACE_SIZE, deterministic=None):
    """Differentiable face crops of a Bx3xHxW [0,1] batch (loss path).

    det_rows: one detection row or None per image. Returns (Kx3xSxS faces, K indices of the images with a
    face). Per face: integer box (truncated, clipped at 0) cut from the tensor, rotated by the eye-line angle
    about (W//2, H//2) of the crop (bilinear, zero fill), resized to the aspect-kept size (bilinear,
    antialias=True), centred on a 128/255 canvas. Gradient flows to `images`.

    The rotation is torchvision's (TF.rotate: its inverse matrix, sampling grid and grid_sample), with the
    matrices of all faces sent to the device in one copy that does not wait: TF.rotate uploads two small
    tensors per face, and each such upload waits for the GPU's queue. The crops are computed in float32 also
    under bf16 autocast (a bf16 sampling grid would be off by up to half a pixel); FaceNet then runs in bf16.
    Each face is cut from its image of images.unbind(0), so the backward adds one BxCxHxW gradient in all (a slice
    images[i:i+1] would add a zero-filled one per face: memory traffic growing with the square of the batch).

    deterministic (default: on CUDA under torch.use_deterministic_algorithms): the rotation by gathers and the
    resize by two matrix products, the same values to float32 rounding (about 1e-6), with a backward without the
    atomic additions of grid_sample's and interpolate's CUDA backwards, which deterministic mode refuses.
    """
    if deterministic is None:
        deterministic = images.is_cuda and torch.are_deterministic_algorithms_enabled()
    boxes, thetas, found = [], [], []
    for i, row in enumerate(det_rows):
        if row is None:
            continue
        row = _floats(row)
        x1, y1, x2, y2 = (max(0, int(v)) for v in row[:4])
        y2, x2 = min(y2, images.shape[-2]), min(x2, images.shape[-1])  # where slicing stops
        h, w = y2 - y1, x2 - x1
        if h <= 0 or w <= 0:  # a box beyond the image's border: no face to crop
            continue
        centre = [1.0 * (c - s * 0.5) for c, s in zip([w // 2, h // 2], [w, h])]  # as TF.rotate
        matrix = _get_inverse_affine_matrix(centre, -face_angle(row[5:]), [0.0, 0.0], 1.0, [0.0, 0.0])
        theta = torch.tensor(matrix, dtype=images.dtype).reshape(2, 3).T  # _gen_affine_grid's rescaled theta
        thetas.append(theta / torch.tensor([0.5 * w, 0.5 * h], dtype=images.dtype))
        boxes.append((x1, y1, x2, y2))
        found.append(i)
    if not found:
        return images.new_zeros(0, 3, size, size), found
    thetas = to_device(torch.stack(thetas), images.device)
    faces = []
    with torch.autocast(images.device.type, enabled=False):  # geometry in float32 also under bf16 autocast
        whole = images.unbind(0)
        for k, (i, (x1, y1, x2, y2)) in enumerate(zip(found, boxes)):
            crop = whole[i][None, :, y1:y2, x1:x2]
            h, w = crop.shape[-2:]
            grid = _base_grid(h, w, images.device, images.dtype).view(1, h * w, 3).bmm(thetas[k:k + 1])
            nh, nw = _letterbox_size(h, w, size)
            if deterministic:
                crop = _sample_bilinear(crop, grid.view(1, h, w, 2))
                crop = _resize_matrix(h, nh, crop) @ crop @ _resize_matrix(w, nw, crop).T
            else:
                crop = F.grid_sample(crop, grid.view(1, h, w, 2), "bilinear", "zeros", align_corners=False)
                crop = TF.resize(crop, [nh, nw], InterpolationMode.BILINEAR, antialias=True)
            top, left = (size - nh) // 2, (size - nw) // 2
            faces.append(F.pad(crop, (left, size - nw - left, top, size - nh - top), value=128 / 255))
    return torch.cat(faces), found


def _base_grid(h, w, device, dtype):
    """1xHxWx3 pixel-centre coordinates (x, y, 1) about the centre, as torchvision's _gen_affine_grid makes them."""
    grid = torch.empty(1, h, w, 3, dtype=dtype, device=device)
    grid[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=device))
    grid[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=device).unsqueeze_(-1))
    grid[..., 2].fill_(1)
    return grid


def _sample_bilinear(image, grid):
    """F.grid_sample(image, grid, "bilinear", "zeros", align_corners=False) of a 1xCxHxW image as a weighted sum of
    four gathers, whose backward (a scatter-add) is deterministic on CUDA in deterministic mode."""
    c, h, w = image.shape[1:]
    x = ((grid[0, ..., 0] + 1) * w - 1) / 2  # pixel coordinates, as grid_sample unnormalizes them
    y = ((grid[0, ..., 1] + 1) * h - 1) / 2
    x0, y0 = x.floor(), y.floor()
    flat = image.reshape(c, h * w)
    out = 0
    for xk, yk in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        weight = (1 - (x - xk).abs()) * (1 - (y - yk).abs()) * ((xk >= 0) & (xk < w) & (yk >= 0) & (yk < h))
        index = (yk.clamp(0, h - 1) * w + xk.clamp(0, w - 1)).long().reshape(1, -1).expand(c, -1)
        out = out + flat.gather(1, index).view(c, *x.shape) * weight
    return out[None]


def _resize_matrix(size, new_size, like):
    """new_size x size matrix of torch's bilinear antialiased resize along one axis (align_corners=False, PIL's
    triangle filter widened by the scale when shrinking), in like's dtype on like's device."""
    scale = size / new_size
    support, inverse = (scale, 1 / scale) if scale >= 1 else (1.0, 1.0)
    centre = scale * (torch.arange(new_size, dtype=torch.float64, device=like.device) + 0.5)[:, None]
    j = torch.arange(size, dtype=torch.float64, device=like.device)[None]
    inside = (j >= (centre - support + 0.5).trunc().clamp(min=0)) & (j < (centre + support + 0.5).trunc())
    weight = (1 - ((j - centre + 0.5) * inverse).abs()).clamp(min=0) * inside
    return (weight / weight.sum(1, keepdim=True)).to(like.dtype)


def cosine_logits(embeddings, database):
    """KxN cosine similarities (torch.cosine_similarity, eps 1e-8) of every embedding with every encoding."""
    return F.cosine_similarity(embeddings.float()[:, None, :], database.float()[None, :, :], dim=2)


class FaceRecognitionLoss(nn.Module):
    """Face loss: cross-entropy of the identity labels over the cosine similarities to the database.

    Built once; forward(enhanced Bx3xHxW in [0,1], labels B) -> (loss, logits BxN, found B bool), in three
    steps that can also be called one by one: `detect` (without gradient, on enhanced * 255, one detector
    call per batch), `embed` (the biggest face of each image aligned from the enhanced tensor itself, all
    faces through the frozen FaceNet in one forward) and `loss`. An image without a face gets a row of zero
    logits; the loss is the mean over the whole (global) batch. forward(..., started) takes a detection queued
    beforehand by `start_detect`.
    """

    def __init__(self, detector, facenet, database_encodings):
        super().__init__()
        self.detector = detector
        self.facenet = facenet
        self.register_buffer("database", torch.as_tensor(database_encodings, dtype=torch.float32))

    def start_detect(self, enhanced):
        """Queues the detection of `enhanced` (see FaceDetector.start) and returns at once: a handle for `detect`."""
        with torch.no_grad(), torch.autocast(enhanced.device.type, enabled=False):
            return self.detector.start(enhanced.detach().float() * 255)

    def detect(self, enhanced, started=None):
        """The biggest face's detection row of each image, or None; of the detection `started` (start_detect) when
        given: the host waits for the device only there."""
        started = self.start_detect(enhanced) if started is None else started
        return [biggest_face(d) for d in self.detector.finish(started)]

    def embed(self, enhanced, rows):
        """(Kx128 FaceNet embeddings with gradient to `enhanced`, the K indices of the images with a face). On CUDA
        the faces go through FaceNet padded with blank ones to the batch size, so that its shapes stay fixed
        (cudnn.benchmark times its kernels once); FaceNet is in eval mode, so a face's embedding does not depend
        on the others."""
        faces, found = align_faces(enhanced, rows)
        if enhanced.is_cuda and len(faces) < len(enhanced):
            faces = torch.cat([faces, faces.new_zeros(len(enhanced) - len(faces), *faces.shape[1:])])
        return self.facenet(faces)[:len(found)], found

    def loss(self, embeddings, found, labels):
        """(loss, logits BxN, found B bool) from the embeddings of the images `found` of a batch of len(labels)."""
        logits = embeddings.new_zeros(len(labels), len(self.database), dtype=torch.float32)
        if found:
            index = to_device(torch.tensor(found), labels.device)
            logits = logits.index_put((index,), cosine_logits(embeddings, self.database))
        mask = to_device(torch.tensor([i in found for i in range(len(labels))]), labels.device)
        # cross-entropy as log_softmax and a gather (the same values): CUDA's nll_loss is refused in deterministic mode
        picked = F.log_softmax(logits, 1).gather(1, labels[:, None].long())[:, 0]
        return global_mean(-picked), logits, mask

    def forward(self, enhanced, labels, started=None):
        return self.loss(*self.embed(enhanced, self.detect(enhanced, started)), labels)


@torch.no_grad()
def encode_faces(images_rgb_uint8_list, detector, facenet, device, batch_size=32):
    """Database encodings: (Kx128 float32 CPU tensor, K kept indices) of the biggest face of each HxWx3 RGB
    uint8 image; images without a face are left out. Per batch: one detector call and one FaceNet forward."""
    encodings, kept = [], []
    for start in range(0, len(images_rgb_uint8_list), batch_size):
        chunk = images_rgb_uint8_list[start:start + batch_size]
        rows = [biggest_face(dets) for dets in detector.detect(chunk)]
        faces = parallel_map(lambda k: None if rows[k] is None else align_face_numpy(chunk[k], rows[k]),
                             range(len(chunk)))  # crops in threads
        found = [k for k, face in enumerate(faces) if face is not None]  # no face, or a box without pixels
        kept += [start + k for k in found]
        if found:  # one copy to the device that does not wait, one back
            batch = torch.cat([faces[k] for k in found])
            encodings.append(to_host(facenet(to_device(batch, torch.device(device))).float()))
    if not encodings:
        return torch.zeros(0, 128), kept
    return torch.cat(encodings), kept


@torch.no_grad()
def similarities(images, detector, facenet, encodings):
    """(KxN cosine similarities of the biggest face of each of the K images with a face to the N database encodings,
    the K indices) of a Bx3xHxW [0,1] batch: the published Retinaface.detect_image, which is the face loss's path
    (FaceRecognitionLoss.detect and .embed: the face cut from the tensor with the truncated box, rotated by
    torchvision, letterboxed on 128/255)."""
    recognizer = FaceRecognitionLoss(detector, facenet, encodings)
    embeddings, found = recognizer.embed(images, recognizer.detect(images))
    return cosine_logits(embeddings, recognizer.database), found


def identify(images_rgb_uint8_list, detector, facenet, encodings, names, device, batch_size=32):
    """Top-1 identification as the published utils/predict.py scores it: the name of the database encoding most
    similar (cosine) to the biggest face of each HxWx3 RGB uint8 image (by `similarities`), None for an image
    without a detected face. Each image goes to the device as uint8 and becomes x / 255 there (the published
    ToTensor); images of one size go through the detector and FaceNet together, batch_size at a time, and the
    matches of a batch come back in one copy."""
    device = torch.device(device)
    by_size, best = {}, []
    for i, image in enumerate(images_rgb_uint8_list):
        by_size.setdefault(np.shape(image), []).append(i)
    for index in by_size.values():
        for start in range(0, len(index), batch_size):
            chunk = index[start:start + batch_size]
            batch = to_device(torch.from_numpy(np.stack([images_rgb_uint8_list[i] for i in chunk])), device)
            cos, found = similarities(batch.permute(0, 3, 1, 2).float().div_(255).contiguous(), detector, facenet,
                                      encodings)
            if found:
                best += zip([chunk[k] for k in found], to_host(cos.argmax(1)).tolist())
    predicted = [None] * len(images_rgb_uint8_list)
    for i, match in best:
        predicted[i] = names[match]
    return predicted
