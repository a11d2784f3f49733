"""Validation during training (train.py --val_dataset NAME): the images of dataset/NAME/underexposed enhanced with
the current weights as test.py enhances them, scored as eval.py scores test.py's output (PSNR and SSIM of the 8-bit
result against normal/, mean brightness, top-1 face identification against the set's own face database), a preview
picture, and best.pth, the weights of the best validation so far."""
import math
import os

import numpy as np
import torch

from nets.enhance import enhance_uint8
from nets.face_recognition import identify
from utils.checkpoint import atomic_save
from utils.data import Pairs, read_ahead
from utils.face_database import identity_of, load_encodings
from utils.images import list_images, side_by_side, to_tensor
from utils.metrics import Average, brightness, psnr, ssim


class Validation:
    """The validation set dataset/NAME/{underexposed,normal} (the published layout of the test sets); calling it
    scores a network, batch_size images at a time read by `workers` threads. Raises ValueError, one line naming
    the folder, when a folder is missing or holds no image."""

    def __init__(self, dataset_dir, batch_size=16, workers=2):
        self.name = os.path.basename(os.path.normpath(dataset_dir))
        self.low_dir, self.normal_dir = (os.path.join(dataset_dir, sub) for sub in ("underexposed", "normal"))
        for folder in (self.low_dir, self.normal_dir):
            if not os.path.isdir(folder):
                raise ValueError(f"{folder}: validation folder not found")
        self.files = list_images(self.low_dir)[0]
        if not self.files:
            raise ValueError(f"{self.low_dir}: no validation images")
        self.pairs = Pairs(self.low_dir, self.files, self.normal_dir)
        self.batch_size, self.workers = batch_size, workers
        self.recognition = None

    def _read(self):
        """Batches of (relative path, image, normal image, or the message of the first problem of the pair)."""
        for batch in read_ahead(self.pairs, self.batch_size, self.workers):
            yield [(rel, image, image if isinstance(image, str) else ref) for rel, image, ref in batch]

    def problems(self):
        """One message per image that cannot be read, has no normal-light image of its name or differs in size from
        it: every pair is decoded once before training, so that a bad file stops the run at once, not after an epoch."""
        return [ref for batch in self._read() for _, _, ref in batch if isinstance(ref, str)]

    def load_face_database(self, database_root, encoding_root, detector, facenet, device):
        """The face database of normal/ (database_root/NAME, encoding_root/NAME_*), built or read as eval.py does."""
        encodings, names = load_encodings(self.normal_dir, os.path.join(database_root, self.name), encoding_root,
                                          self.name, detector, facenet, device, self.batch_size)
        self.recognition = detector, facenet, encodings, names

    @torch.no_grad()
    def __call__(self, model, device, precision="tf32", preview_images=4, tile=512, report=print):
        """({'psnr', 'ssim', 'brightness', 'face_acc', 'no_face', 'images'}, preview picture or None) of the images
        enhanced by `model` (in eval mode, then back in the mode it had). The preview has one row input | enhanced |
        normal per image for the first `preview_images` images. An image that stopped being readable is reported
        (one line to `report`) and left out."""
        detector, facenet, encodings, names = self.recognition
        training = model.training
        model.eval()
        means = {name: Average() for name in ("psnr", "ssim", "brightness")}
        correct = no_face = scored = 0
        rows = []
        for batch in self._read():
            good = []
            for rel, image, ref in batch:
                if isinstance(ref, str):
                    report(f"validation skipped {ref}")
                else:
                    good.append((rel, image, ref))
            enhanced = [None] * len(good)
            for index, uint8 in enhance_uint8(model, [image for _, image, _ in good], device, tile, precision):
                for i, out in zip(index, uint8.cpu().numpy()):
                    enhanced[i] = out
            for (rel, image, ref), out in zip(good, enhanced):
                y, ref_y = to_tensor(out).to(device)[None], to_tensor(ref).to(device)[None]
                means["psnr"].update(psnr(y, ref_y).item())
                means["ssim"].update(ssim(y, ref_y).item())
                means["brightness"].update(brightness(y).item())
                if len(rows) < preview_images:
                    rows.append(side_by_side([image, out, ref]))
            predicted = identify(enhanced, detector, facenet, encodings, names, device, self.batch_size)
            correct += sum(name == identity_of(rel) for (rel, _, _), name in zip(good, predicted))
            no_face += predicted.count(None)
            scored += len(good)
        model.train(training)
        measures = {name: m.get_results() for name, m in means.items()}
        measures.update(face_acc=correct / scored if scored else math.nan, no_face=no_face, images=scored)
        return measures, stack_rows(rows) if rows else None


def stack_rows(rows):
    """HxWx3 uint8 pictures one below the other on white, each scaled to the first one's width: side_by_side of
    the transposed pictures."""
    columns = side_by_side([np.ascontiguousarray(r.transpose(1, 0, 2)) for r in rows])
    return np.ascontiguousarray(columns.transpose(1, 0, 2))


class BestCheckpoint:
    """best.pth, the bare state dict (as epochN.pth) of the epoch whose validation is the best so far by `metric`
    (higher is better; ties go by PSNR), replaced atomically when a validation beats it. state_dict() and
    load_state_dict() carry the best so far through resume.pth, so that a resumed run never replaces it with worse."""

    def __init__(self, path, metric, dataset):
        self.path, self.metric, self.dataset = path, metric, dataset
        self.epoch = self.measures = None

    def _key(self, measures):
        return measures[self.metric], measures["psnr"]

    def update(self, epoch, measures, weights):
        """Writes weights() to best.pth when `measures` beat the best so far; returns whether they did."""
        key = self._key(measures)
        if any(math.isnan(v) for v in key) or (self.measures is not None and key <= self._key(self.measures)):
            return False
        atomic_save(weights(), self.path)
        self.epoch, self.measures = epoch, dict(measures)
        return True

    def describe(self):
        if self.measures is None:
            return f"{self.path}: none yet"
        return (f"{self.path} holds epoch {self.epoch} ({self.metric} {self.measures[self.metric]:.4f}, "
                f"psnr {self.measures['psnr']:.4f})")

    def state_dict(self):
        return {"dataset": self.dataset, "epoch": self.epoch, "measures": self.measures}

    def load_state_dict(self, state):
        """Restores the best so far, unless it was chosen on another validation set than this one's."""
        if state and state["measures"] is not None and self.dataset in (None, state["dataset"]):
            self.dataset, self.epoch, self.measures = state["dataset"], state["epoch"], state["measures"]
