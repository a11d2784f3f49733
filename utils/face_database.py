"""The face database of a data set: the first normal-light image of every identity and its FaceNet encoding.

    encodings, names = load_encodings("dataset/CASIA-Test/normal", "database/CASIA-Test", "encoding",
                                      "CASIA-Test", detector, facenet, device)

As the published code, `database/NAME/` and `encoding/NAME_encoding.npy`, `NAME_name.npy` are built on first
use and reused after. Unlike it, `encoding/NAME_fingerprint.json` records everything the encodings depend on
(the chosen images' names and bytes, the detector's and FaceNet's weights and settings, the alignment, the cache
format) and the sha256 of the two files written with it. The cache is used only while all of it still holds
(database/NAME included): a changed input rebuilds it, and the files of two runs building at the same time are
never taken for one cache.
"""
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nets.face_recognition import FACE_SIZE, encode_faces
from utils.checkpoint import atomic_write, weights_sha256
from utils.images import ImageReadError, list_images, read_image

CACHE_FORMAT = 2  # raise it when the way encodings are computed changes: older caches are then rebuilt


def identity_of(rel_path):
    """Identity of an image: its sub-folder (LFW layout), else the file stem before the last underscore."""
    parts = Path(rel_path).parts
    if len(parts) > 1:
        return parts[0]
    stem = Path(rel_path).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def database_images(normal_dir, say=None):
    """[(identity, relative path in normal_dir)]: the first image (sorted) of every identity, in that order.
    say: called with a line for each entry of normal_dir passed over (utils.images.list_images)."""
    first = {}
    for rel in list_images(normal_dir, say)[0]:
        first.setdefault(identity_of(rel), rel)
    return list(first.items())


def _database_path(identity, rel):
    return os.path.join(identity, os.path.basename(rel)) if len(Path(rel).parts) > 1 else rel


def _chosen(normal_dir, say=None):
    """[(identity, path in normal_dir, path in the database folder)] of the database images."""
    return [(identity, rel, _database_path(identity, rel)) for identity, rel in database_images(normal_dir, say)]


def _inside(path, folder):
    real, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, folder]) == folder


def build_database(normal_dir, database_dir, say=None):
    """Make database_dir hold exactly the first image of every identity of normal_dir (flat: the file as is;
    sub-folders: IDENTITY/file), each copied atomically. Only image files that really lie inside database_dir (not
    behind a link to a folder elsewhere) are ever removed. Returns the chosen [(identity, path in database_dir)]."""
    normal_real, database_real = os.path.realpath(normal_dir), os.path.realpath(database_dir)
    if os.path.commonpath([normal_real, database_real]) in (normal_real, database_real):
        raise ValueError(f"{database_dir}: the database folder must not be {normal_dir}, inside it or above it")
    chosen = _chosen(normal_dir, say)
    wanted = {dst for _, _, dst in chosen}
    if os.path.isdir(database_dir):
        for rel in list_images(database_dir)[0]:
            path = os.path.join(database_dir, rel)
            if rel not in wanted and _inside(os.path.dirname(path), database_dir):
                os.remove(path)
    for _, rel, dst in chosen:
        with open(os.path.join(normal_dir, rel), "rb") as src:
            atomic_write(os.path.join(database_dir, dst), lambda f: shutil.copyfileobj(src, f))
    return [(identity, dst) for identity, _, dst in chosen]


def _sha256_files(named_files):
    """sha256 of [(name, path)]: each name, size and content, in order."""
    h = hashlib.sha256()
    for name, path in named_files:
        with open(path, "rb") as f:
            data = f.read()
        h.update(os.fsencode(name.replace(os.sep, "/")) + f"\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def fingerprint(normal_dir, detector, facenet):
    """Everything the encodings depend on: 'database' (the chosen images' bytes under their names in the database
    folder), the detector's weights and settings, FaceNet's weights (its backbone included: the weight names differ),
    the alignment and the cache format."""
    chosen = [(dst, os.path.join(normal_dir, rel)) for _, rel, dst in _chosen(normal_dir)]
    return {"format": CACHE_FORMAT, "database": _sha256_files(chosen),
            "detector": {"weights": weights_sha256(detector.model), "confidence": detector.confidence,
                         "nms_iou": detector.nms_iou, "size": detector.size},
            "facenet": {"weights": weights_sha256(facenet), "network": type(facenet).__name__},
            "alignment": {"face_size": FACE_SIZE}}


def _read_cache(paths, expected, database_dir, normal_dir):
    """(encodings, names) when the fingerprint file records `expected`, the two files hold the bytes it recorded
    and the database folder holds the chosen images of normal_dir; else None."""
    try:
        with open(paths["fingerprint"]) as f:
            stored = json.load(f)
        if {k: v for k, v in stored.items() if k != "files"} != expected:
            return None
        data = {}
        for kind in ("encoding", "name"):
            with open(paths[kind], "rb") as f:
                data[kind] = f.read()
            if hashlib.sha256(data[kind]).hexdigest() != stored["files"][kind]:
                return None
        copies = [(dst, os.path.join(database_dir, dst)) for _, _, dst in _chosen(normal_dir)]
        if _sha256_files(copies) != expected["database"]:
            return None
        encodings = np.load(io.BytesIO(data["encoding"]), allow_pickle=False)
        names = np.load(io.BytesIO(data["name"]), allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if encodings.ndim != 2 or names.ndim != 1 or len(encodings) != len(names) or names.dtype.kind != "U" \
            or encodings.dtype.kind != "f" or not np.isfinite(encodings).all():
        return None
    return encodings, [str(n) for n in names]


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_encodings(normal_dir, database_dir, encoding_dir, name, detector, facenet, device, batch_size=32):
    """(float32 Nx128 tensor on device, N identity names): from the cache in encoding_dir when its fingerprint
    matches (see the module's docstring), else the database folder is refreshed and the encodings recomputed.
    An identity whose database image shows no face is left out; no face at all raises ValueError."""
    paths = {kind: os.path.join(encoding_dir, f"{name}_{kind}.{ext}")
             for kind, ext in (("encoding", "npy"), ("name", "npy"), ("fingerprint", "json"))}
    expected = fingerprint(normal_dir, detector, facenet)
    cached = _read_cache(paths, expected, database_dir, normal_dir)
    if cached is not None:
        return torch.from_numpy(cached[0]).float().to(device), cached[1]

    print(f"building the face database {database_dir} and its encodings in {encoding_dir}")
    if not build_database(normal_dir, database_dir, say=print):
        raise ValueError(f"{normal_dir}: no images to build the face database from")
    chosen = _chosen(normal_dir)  # encoded from normal_dir itself: another run may be refreshing the copies
    encodings, names = [], []
    for start in tqdm(range(0, len(chosen), batch_size), desc="face database", unit="batch"):
        images, readable = [], []
        for identity, rel, dst in chosen[start:start + batch_size]:
            try:
                images.append(read_image(os.path.join(normal_dir, rel)))
                readable.append((identity, dst))
            except ImageReadError as e:
                tqdm.write(f"identity {identity} left out of the database: {e}")
        codes, kept = encode_faces(images, detector, facenet, device, batch_size)
        for i in sorted(set(range(len(images))) - set(kept)):
            identity, dst = readable[i]
            tqdm.write(f"identity {identity} left out of the database: no face found in "
                       f"{os.path.join(database_dir, dst)}")
        encodings.append(codes.float().cpu())
        names += [readable[i][0] for i in kept]
    if not names:
        raise ValueError(f"{database_dir}: no face found in any database image")

    encodings = torch.cat(encodings).numpy()
    data = {"encoding": _npy(encodings), "name": _npy(np.array(names, dtype=str))}
    for kind, content in data.items():
        atomic_write(paths[kind], lambda f: f.write(content))
    files = {kind: hashlib.sha256(content).hexdigest() for kind, content in data.items()}
    atomic_write(paths["fingerprint"], lambda f: f.write(json.dumps({**expected, "files": files}).encode()))
    return torch.from_numpy(encodings).to(device), names
