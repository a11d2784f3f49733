"""The face database of a data set: the first normal-light image of every identity and its FaceNet encoding.

    encodings, names = load_encodings("dataset/CASIA-Test/normal", "database/CASIA-Test", "encoding",
                                      "CASIA-Test", detector, facenet, "checkpoint/facenet_mobilenet.pth", device)

As the published code, `database/NAME/` and `encoding/NAME_encoding.npy`, `NAME_name.npy` are built on first
use and reused after. Unlike it, `encoding/NAME_fingerprint.json` records what they were built from (the chosen
images' names and bytes, the FaceNet weights file), and a change rebuilds them instead of going stale silently.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nets.face_recognition import encode_faces
from utils.checkpoint import atomic_write
from utils.images import ImageReadError, list_images, read_image


def identity_of(rel_path):
    """Identity of an image: its sub-folder (LFW layout), else the file stem before the last underscore."""
    parts = Path(rel_path).parts
    if len(parts) > 1:
        return parts[0]
    stem = Path(rel_path).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def database_images(normal_dir):
    """[(identity, relative path in normal_dir)]: the first image (sorted) of every identity, in that order."""
    first = {}
    for rel in list_images(normal_dir)[0]:
        first.setdefault(identity_of(rel), rel)
    return list(first.items())


def _database_path(identity, rel):
    return os.path.join(identity, os.path.basename(rel)) if len(Path(rel).parts) > 1 else rel


def build_database(normal_dir, database_dir):
    """Make database_dir hold exactly the first image of every identity of normal_dir (flat: the file as is;
    sub-folders: IDENTITY/file). Only image files inside database_dir are ever removed. Returns the chosen
    [(identity, relative path in database_dir)]."""
    normal_real, database_real = os.path.realpath(normal_dir), os.path.realpath(database_dir)
    if os.path.commonpath([normal_real, database_real]) in (normal_real, database_real):
        raise ValueError(f"{database_dir}: the database folder must not be {normal_dir}, inside it or above it")
    chosen = [(identity, rel, _database_path(identity, rel)) for identity, rel in database_images(normal_dir)]
    wanted = {dst for _, _, dst in chosen}
    if os.path.isdir(database_dir):
        for rel in list_images(database_dir)[0]:
            if rel not in wanted:
                os.remove(os.path.join(database_dir, rel))
    for _, rel, dst in chosen:
        os.makedirs(os.path.dirname(os.path.join(database_dir, dst)), exist_ok=True)
        shutil.copyfile(os.path.join(normal_dir, rel), os.path.join(database_dir, dst))
    return [(identity, dst) for identity, _, dst in chosen]


def _sha256_file(path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def fingerprint(normal_dir, facenet_path):
    """{'database': sha256 of the chosen images' relative names and bytes, 'facenet': sha256 of the weights file}."""
    h = hashlib.sha256()
    for identity, rel in database_images(normal_dir):
        h.update(f"{identity}\0{rel.replace(os.sep, '/')}\0".encode())
        _sha256_file(os.path.join(normal_dir, rel), h)
    return {"database": h.hexdigest(), "facenet": _sha256_file(facenet_path).hexdigest()}


def _read_cache(paths, expected):
    """(encodings, names) from the cache files when they exist and their fingerprint is `expected`, else None."""
    try:
        with open(paths["fingerprint"]) as f:
            if json.load(f) != expected:
                return None
        encodings = np.load(paths["encoding"], allow_pickle=False)
        names = np.load(paths["name"], allow_pickle=False)
    except (OSError, ValueError):
        return None
    if encodings.ndim != 2 or names.ndim != 1 or len(encodings) != len(names) or names.dtype.kind != "U":
        return None
    return encodings, [str(n) for n in names]


def load_encodings(normal_dir, database_dir, encoding_dir, name, detector, facenet, facenet_path, device,
                   batch_size=32):
    """(float32 Nx128 tensor on device, N identity names): from the cache in encoding_dir when its fingerprint
    matches normal_dir and facenet_path, else the database folder is refreshed and the encodings recomputed.
    An identity whose database image shows no face is left out; no face at all raises ValueError."""
    paths = {kind: os.path.join(encoding_dir, f"{name}_{kind}.{ext}")
             for kind, ext in (("encoding", "npy"), ("name", "npy"), ("fingerprint", "json"))}
    expected = fingerprint(normal_dir, facenet_path)
    cached = _read_cache(paths, expected)
    if cached is not None:
        return torch.from_numpy(cached[0]).float().to(device), cached[1]

    print(f"building the face database {database_dir} and its encodings in {encoding_dir}")
    chosen = build_database(normal_dir, database_dir)
    if not chosen:
        raise ValueError(f"{normal_dir}: no images to build the face database from")
    encodings, names = [], []
    for start in tqdm(range(0, len(chosen), batch_size), desc="face database", unit="batch"):
        images, readable = [], []
        for identity, rel in chosen[start:start + batch_size]:
            try:
                images.append(read_image(os.path.join(database_dir, rel)))
                readable.append((identity, rel))
            except ImageReadError as e:
                tqdm.write(f"identity {identity} left out of the database: {e}")
        codes, kept = encode_faces(images, detector, facenet, device, batch_size)
        for i in sorted(set(range(len(images))) - set(kept)):
            identity, rel = readable[i]
            tqdm.write(f"identity {identity} left out of the database: no face found in {os.path.join(database_dir, rel)}")
        encodings.append(codes.float().cpu())
        names += [readable[i][0] for i in kept]
    if not names:
        raise ValueError(f"{database_dir}: no face found in any database image")

    encodings = torch.cat(encodings).numpy()
    os.makedirs(encoding_dir, exist_ok=True)
    if os.path.exists(paths["fingerprint"]):
        os.remove(paths["fingerprint"])  # a crash below then leaves a cache that is rebuilt, never a stale one
    atomic_write(paths["encoding"], lambda f: np.save(f, encodings))
    atomic_write(paths["name"], lambda f: np.save(f, np.array(names, dtype=str)))
    atomic_write(paths["fingerprint"], lambda f: f.write(json.dumps(expected).encode()))
    return torch.from_numpy(encodings).to(device), names
