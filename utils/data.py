"""Data: batches read ahead in threads (test.py, eval.py); images paired with their references (eval.py,
validation); training items, low-light face images with parsing maps and identities, plus unpaired contrastive
samples."""
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import resize
from tqdm import tqdm

from utils.face_database import identity_of
from utils.images import ImageReadError, list_images, read_image, to_tensor
from utils.runtime import to_device


def read_ahead(items, batch_size, workers):
    """Lists of batch_size consecutive items[i] (the last one shorter), in order, read by `workers` threads up to
    2 x workers batches ahead of the caller (0: each read when asked). Threads rather than DataLoader's worker
    processes: image decoding runs outside the GIL, and no process starts (where processes are spawned, as on
    macOS and Windows, each would import torch again; forked ones cost about 2 % of test.py's time on 2 cores)."""
    def read(start):
        return [items[i] for i in range(start, min(start + batch_size, len(items)))]
    starts = range(0, len(items), batch_size)
    if workers == 0:
        yield from map(read, starts)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for start in starts:
            pending.append(pool.submit(read, start))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Pairs:
    """(relative path, image, reference) per file of root: HxWx3 uint8 arrays (as_tensor: 3xHxW in [0,1]) or
    the error message; the reference is the image of reference_dir with the same relative path, else the same
    folder and stem, and None when no reference_dir is given. A reference of another size than its image is
    replaced by a message saying so."""

    def __init__(self, root, files, reference_dir=None, as_tensor=False):
        self.root, self.files, self.reference_dir, self.as_tensor = root, files, reference_dir, as_tensor
        references = list_images(reference_dir)[0] if reference_dir else []
        self.by_stem = {os.path.splitext(rel)[0]: rel for rel in references}
        self.by_stem.update({rel: rel for rel in references})

    def __len__(self):
        return len(self.files)

    def _read(self, path):
        try:
            image = read_image(path)
            return to_tensor(image) if self.as_tensor else image
        except ImageReadError as e:
            return str(e)

    def __getitem__(self, i):
        rel = self.files[i]
        ref = None
        if self.reference_dir:
            match = self.by_stem.get(rel) or self.by_stem.get(os.path.splitext(rel)[0])
            ref = (self._read(os.path.join(self.reference_dir, match)) if match else
                   f"{os.path.join(self.root, rel)}: no reference image of that name in {self.reference_dir}")
        image = self._read(os.path.join(self.root, rel))
        size = lambda x: tuple(x.shape[1:] if self.as_tensor else x.shape[:2])
        if not isinstance(image, str) and ref is not None and not isinstance(ref, str) and size(ref) != size(image):
            ref = f"{os.path.join(self.root, rel)}: size {size(image)} differs from its reference's {size(ref)}"
        return rel, image, ref


class TrainingDataGone(RuntimeError):
    """Every training item has stopped being readable."""


def read_labels(path):
    """HxW parsing map as stored: uint8 ('L' and 'P' maps give the class indices themselves), else int32."""
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except Exception as e:  # missing file, or a decoder's OSError, SyntaxError, EOFError, ...
        raise ValueError(f"{path}: cannot read parsing map ({e})") from None
    arr = arr[..., 0] if arr.ndim == 3 else arr
    return torch.from_numpy(arr if arr.dtype == np.uint8 else arr.astype(np.int32))


def collate_training(items):
    """DataLoader's collate of TrainSet items: (low, labels, positives, negatives as lists of tensors of their own
    sizes, identities as a B int64 tensor), resized on the device by training_batch."""
    low, seg, identities, pos, neg = zip(*items)
    return list(low), list(seg), torch.tensor(identities), list(pos), list(neg)


def _resized(images, size, device, labels=False):
    """B x 3 x size x size float images in [0,1] (labels: B x size x size long maps) on `device`, from a list of
    HxWx3 uint8 images (labels: HxW maps), resized (not cropped) as the published loader does: bilinear with
    antialias on float images in [0,1], clamped (labels: nearest neighbour, which never invents a class). The
    images of one size go through one resize."""
    by_size, out = {}, [None] * len(images)
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    for index in by_size.values():
        x = torch.stack([to_device(images[i], device) for i in index])
        if labels:
            x = F.interpolate(x[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        else:
            x = resize(x.permute(0, 3, 1, 2).float().div_(255), [size, size], antialias=True).clamp_(0, 1)
        for k, i in enumerate(index):
            out[i] = x[k]
    return torch.stack(out)


def training_batch(batch, size, device):
    """(low, seg, labels, positives, negatives) on `device`, resized to size x size there, from a batch of
    collate_training: the items travel as uint8 images and maps (float32 images and int64 maps at 384x384 were
    6.5 MB an item), and the workers only decode."""
    low, seg, identities, pos, neg = batch
    return (_resized(low, size, device), _resized(seg, size, device, labels=True), to_device(identities, device),
            _resized(pos, size, device), _resized(neg, size, device))


class TrainSet(Dataset):
    """Items (low-light image, parsing labels, identity index, positive, negative) of dataset/NAME: HxWx3 uint8 and
    HxW label tensors of the files' own sizes (collate_training batches them, training_batch resizes them on the
    device to `size` x `size`, self.size).

    root: dataset/NAME with underexposed/ and seg/ (PNG label maps, same stem); names: the identities of
    the face database, in encoding order. Each item also draws one normal-light positive and one
    low-light negative at random; the draw depends only on (seed, epoch, index), so it is the same
    whatever the number of workers or processes.
    """

    def __init__(self, root, names, size, positives_dir, negatives_dir, seed=1):
        self.low_dir, self.seg_dir, self.size, self.seed, self.epoch = os.path.join(root, "underexposed"), \
            os.path.join(root, "seg"), size, seed, 0
        self.report = print
        self.files = list_images(self.low_dir)[0]
        if not self.files:
            raise ValueError(f"{self.low_dir}: no training images found")
        index = {name: i for i, name in enumerate(names)}
        missing = sorted({identity_of(f) for f in self.files} - set(index))
        if missing:
            raise ValueError(f"identity {missing[0]!r} of {self.low_dir} is not in the face database "
                             f"({len(missing)} missing; was its database image without a detectable face?)")
        self.labels = [index[identity_of(f)] for f in self.files]
        self.contrast = [(d, list_images(d)[0]) for d in (positives_dir, negatives_dir)]
        for d, files in self.contrast:
            if not files:
                raise ValueError(f"{d}: no contrastive images found")

    def unreadable(self, part=0, parts=1):
        """One message per training image, parsing map or contrastive image that cannot be read: decoding every
        file once before training (seconds per thousand images) keeps a corrupt file from stopping it halfway.
        With parts > 1, only the files part, part + parts, ... (one process's share of the check under torchrun)."""
        checks = [(read_image, os.path.join(self.low_dir, rel)) for rel in self.files]
        checks += [(read_labels, self._seg_path(rel)) for rel in self.files]
        checks += [(read_image, os.path.join(d, rel)) for d, files in self.contrast for rel in files]
        checks = checks[part::parts]
        messages = []
        for read, path in tqdm(checks, desc="checking training files", unit="file", leave=False):
            try:
                read(path)
            except ValueError as e:  # ImageReadError included
                messages.append(str(e))
        return messages

    def _seg_path(self, rel):
        return os.path.join(self.seg_dir, os.path.splitext(rel)[0] + ".png")

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        """Item i (key i, drawn for self.epoch, or key (epoch, i): the key carries the epoch to persistent loader
        workers, whose copy of self.epoch is the first epoch's). When one of its files has stopped being readable,
        one line naming it goes to self.report (print unless set) and the next readable item (i + 1, i + 2, ...)
        stands in: batches keep their shape and training goes on."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        for k in range(len(self.files)):
            j = (i + k) % len(self.files)
            try:
                return self._item(j, epoch)
            except ValueError as e:  # ImageReadError included
                self.report(f"skipped {e}; the next readable training item stands in")
        raise TrainingDataGone(f"{self.low_dir}: no training item can be read any more")

    def _item(self, i, epoch):
        rel = self.files[i]
        seg = self._seg_path(rel)
        rng = np.random.default_rng([self.seed, epoch, i])
        pos, neg = (os.path.join(d, files[rng.integers(len(files))]) for d, files in self.contrast)
        image = lambda path: torch.from_numpy(read_image(path))
        return image(os.path.join(self.low_dir, rel)), read_labels(seg), self.labels[i], image(pos), image(neg)

