"""Face recognition of Low-FaceNet: eye-line alignment, FaceNet embedding, cosine similarity to a face database.

Two crop paths, as the published code:
- align_face_numpy: the face database (uint8 image, cv2 rotation and letterbox);
- align_faces: the face loss (crop of the enhanced tensor itself, torchvision rotation and resize), so
  that gradient flows from the recognition logits back to the enhanced image.
"""
import math

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from nets.losses import global_mean
from nets.retinaface import biggest_face

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
    """(nh, nw): the aspect-kept size inside size x size, int() as the published letterbox."""
    s = min(size / w, size / h)
    return int(h * s), int(w * s)


def align_face_numpy(image_rgb_uint8, det_row, size=FACE_SIZE):
    """1x3xSxS float32 FaceNet input of the face `det_row` of an HxWx3 RGB uint8 image (database path).

    As the published encoder: the box is rounded to the nearest pixel (clipped at 0), the crop rotated in
    float32 about (w//2, h//2) (cv2 bilinear, black border), truncated to uint8, letterboxed with cv2.resize
    onto grey 128, divided by 255.
    """
    row = _floats(det_row)
    x1, y1, x2, y2 = (max(0, round(v)) for v in row[:4])
    crop = np.asarray(image_rgb_uint8)[y1:y2, x1:x2].astype(np.float32)
    h, w = crop.shape[:2]
    rotation = cv2.getRotationMatrix2D((w // 2, h // 2), face_angle(row[5:]), 1)
    crop = cv2.warpAffine(crop, rotation, (w, h)).astype(np.uint8)
    nh, nw = _letterbox_size(h, w, size)
    canvas = np.full((size, size, 3), 128.0)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = cv2.resize(crop, (nw, nh))
    return torch.from_numpy((canvas / 255).transpose(2, 0, 1).copy()).float()[None]


def align_faces(images, det_rows, size=FACE_SIZE):
    """Differentiable face crops of a Bx3xHxW [0,1] batch (loss path).

    det_rows: one detection row or None per image. Returns (Kx3xSxS faces, K indices of the images with a
    face). Per face: integer box (truncated, clipped at 0) cut from the tensor, rotated by the eye-line angle
    about (W//2, H//2) of the crop (bilinear, zero fill), resized to the aspect-kept size (bilinear,
    antialias=True), centred on a 128/255 canvas. Gradient flows to `images`.
    """
    faces, found = [], []
    for i, row in enumerate(det_rows):
        if row is None:
            continue
        row = _floats(row)
        x1, y1, x2, y2 = (max(0, int(v)) for v in row[:4])
        crop = images[i:i + 1, :, y1:y2, x1:x2]
        h, w = crop.shape[-2:]
        crop = TF.rotate(crop, face_angle(row[5:]), InterpolationMode.BILINEAR, center=[w // 2, h // 2])
        nh, nw = _letterbox_size(h, w, size)
        crop = TF.resize(crop, [nh, nw], InterpolationMode.BILINEAR, antialias=True)
        top, left = (size - nh) // 2, (size - nw) // 2
        faces.append(F.pad(crop, (left, size - nw - left, top, size - nh - top), value=128 / 255))
        found.append(i)
    if not faces:
        return images.new_zeros(0, 3, size, size), found
    return torch.cat(faces), found


def cosine_logits(embeddings, database):
    """KxN cosine similarities (torch.cosine_similarity, eps 1e-8) of every embedding with every encoding."""
    return F.cosine_similarity(embeddings.float()[:, None, :], database.float()[None, :, :], dim=2)


class FaceRecognitionLoss(nn.Module):
    """Face loss: cross-entropy of the identity labels over the cosine similarities to the database.

    Built once; forward(enhanced Bx3xHxW in [0,1], labels B) -> (loss, logits BxN, found B bool), in three
    steps that can also be called one by one: `detect` (without gradient, on enhanced * 255, one detector
    call per batch), `embed` (the biggest face of each image aligned from the enhanced tensor itself, all
    faces through the frozen FaceNet in one forward) and `loss`. An image without a face gets a row of zero
    logits; the loss is the mean over the whole (global) batch.
    """

    def __init__(self, detector, facenet, database_encodings):
        super().__init__()
        self.detector = detector
        self.facenet = facenet
        self.register_buffer("database", torch.as_tensor(database_encodings, dtype=torch.float32))

    def detect(self, enhanced):
        """The biggest face's detection row of each image, or None."""
        with torch.no_grad(), torch.autocast(enhanced.device.type, enabled=False):
            return [biggest_face(d) for d in self.detector.detect(enhanced.detach().float() * 255)]

    def embed(self, enhanced, rows):
        """(Kx128 FaceNet embeddings with gradient to `enhanced`, the K indices of the images with a face)."""
        faces, found = align_faces(enhanced, rows)
        return self.facenet(faces), found

    def loss(self, embeddings, found, labels):
        """(loss, logits BxN, found B bool) from the embeddings of the images `found` of a batch of len(labels)."""
        logits = embeddings.new_zeros(len(labels), len(self.database), dtype=torch.float32)
        if found:
            index = torch.tensor(found, device=labels.device)
            logits = logits.index_put((index,), cosine_logits(embeddings, self.database))
        mask = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        mask[found] = True
        return global_mean(F.cross_entropy(logits, labels, reduction="none")), logits, mask

    def forward(self, enhanced, labels):
        return self.loss(*self.embed(enhanced, self.detect(enhanced)), labels)


@torch.no_grad()
def encode_faces(images_rgb_uint8_list, detector, facenet, device, batch_size=32):
    """Database encodings: (Kx128 float32 CPU tensor, K kept indices) of the biggest face of each HxWx3 RGB
    uint8 image; images without a face are left out."""
    encodings, kept = [], []
    for start in range(0, len(images_rgb_uint8_list), batch_size):
        chunk = images_rgb_uint8_list[start:start + batch_size]
        faces = []
        for offset, (image, dets) in enumerate(zip(chunk, detector.detect(chunk))):
            row = biggest_face(dets)
            if row is not None:
                faces.append(align_face_numpy(image, row))
                kept.append(start + offset)
        if faces:
            encodings.append(facenet(torch.cat(faces).to(device)).float().cpu())
    if not encodings:
        return torch.zeros(0, 128), kept
    return torch.cat(encodings), kept


def identify(images_rgb_uint8_list, detector, facenet, encodings, names, device, batch_size=32):
    """Top-1 identification as eval.py scores it: the name of the database encoding most similar (cosine) to the
    biggest face of each HxWx3 RGB uint8 image, None for an image without a detected face."""
    codes, kept = encode_faces(images_rgb_uint8_list, detector, facenet, device, batch_size)
    predicted = [None] * len(images_rgb_uint8_list)
    for i, best in zip(kept, cosine_logits(codes.to(encodings), encodings).argmax(1).tolist()):
        predicted[i] = names[best]
    return predicted
