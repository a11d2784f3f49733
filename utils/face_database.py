"""The face database of a data set: one normal-light image of every identity, saved as the published code saves it,
and its FaceNet encoding.

    encodings, names = load_encodings("dataset/CASIA-Test/normal", "database/CASIA-Test", "encoding",
                                      "CASIA-Test", detector, facenet, device)

As the published code, `database/NAME/` holds the chosen image of every identity re-saved with Pillow
(`Image.open(src).save(dst)`: a JPEG is re-encoded at Pillow's default quality), `encoding/NAME_encoding.npy` and
`NAME_name.npy` the encodings of those re-saved images; both are built on first use and reused after. The chosen
image is an identity's first in sorted order, or with order="listdir" its first in `os.listdir` order (the
published choice, which differs between file systems; so does the order of the names then, which is the database
folder's `os.listdir` order as in the published code). The database folder is flat as the published one (an
identity folder for each image only where file names repeat across identities).

Unlike the published code, which deleted the whole folder first, a build removes only files that earlier builds
wrote (recorded in `database/NAME/.face_database.json`) and refuses a folder holding anything else.
`encoding/NAME_fingerprint.json` records everything the encodings depend on (the chosen images' names and bytes,
the choice order, Pillow's version, the detector's and FaceNet's weights and settings, the alignment, the cache
format) and the sha256 of the files written with it (the database images included). The cache is used only while
all of it still holds: a changed input rebuilds it, and the files of two runs building at the same time are never
taken for one cache. Every file is written atomically: a full disk or a killed run leaves whole files only, and no
cache that passes for a complete one.
"""
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm import tqdm

from nets.face_recognition import FACE_SIZE, encode_faces
from utils.checkpoint import atomic_write, weights_sha256
from utils.images import ImageReadError, list_images, read_image

CACHE_FORMAT = 3  # raise it when the way encodings are computed changes: older caches are then rebuilt
ORDERS = ("sorted", "listdir")  # which image of an identity the database keeps: see the module's docstring
MANIFEST = ".face_database.json"  # in the database folder: the files that builds wrote there


class FaceDatabaseError(ValueError):
    """A face database that cannot be built or written; the message (one line) names the folder or file."""


def identity_of(rel_path):
    """Identity of an image: its sub-folder (LFW layout), else the file stem before the last underscore."""
    parts = Path(rel_path).parts
    if len(parts) > 1:
        return parts[0]
    stem = Path(rel_path).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def listdir_order(root, rels):
    """The relative paths `rels` below root in the order `os.listdir` lists them, folder by folder: the order of
    the published code's loops over a folder (the file system's order, not a sorted one)."""
    listings = {}

    def rank(rel):
        key, folder = [], root
        for part in Path(rel).parts:
            if folder not in listings:
                listings[folder] = {name: i for i, name in enumerate(os.listdir(folder))}
            key.append(listings[folder].get(part, len(listings[folder])))
            folder = os.path.join(folder, part)
        return key
    return sorted(rels, key=rank)


def database_images(normal_dir, order="sorted", say=None):
    """[(identity, relative path in normal_dir)]: the first image of every identity in `order` ('sorted' or
    'listdir'), identities in the order of their first image. say: called with a line for each entry of normal_dir
    passed over (utils.images.list_images)."""
    rels = list_images(normal_dir, say)[0]
    if order == "listdir":
        rels = listdir_order(normal_dir, rels)
    first = {}
    for rel in rels:
        first.setdefault(identity_of(rel), rel)
    return list(first.items())


def _chosen(normal_dir, order="sorted", say=None):
    """[(identity, path in normal_dir, path in the database folder)] of the database images: flat as the published
    database, IDENTITY/file only where two identities' images share a file name."""
    chosen = database_images(normal_dir, order, say)
    names = [os.path.basename(rel) for _, rel in chosen]
    flat = len(set(names)) == len(names)
    return [(identity, rel, name if flat else os.path.join(identity, name))
            for (identity, rel), name in zip(chosen, names)]


def resaved(path):
    """The bytes the published load_face_database writes for the image `path`: Image.open(path).save(...) in the
    format of its extension with Pillow's defaults (a JPEG re-encoded at quality 75). ImageReadError when Pillow
    cannot read the image or save it in that format."""
    buffer = io.BytesIO()
    try:
        with Image.open(path) as im:
            im.save(buffer, format=Image.registered_extensions()[os.path.splitext(path)[1].lower()])
    except Exception as e:  # an undecodable file, or a mode its extension's format cannot hold (RGBA as JPEG)
        reason = "empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else str(e) or type(e).__name__
        raise ImageReadError(f"{path}: cannot read image ({reason})") from None
    return buffer.getvalue()


def _inside(path, folder):
    real, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, folder]) == folder


def _read_record(database_dir):
    """The set of files that builds recorded writing in database_dir (empty without a record); FaceDatabaseError
    when the record is not one."""
    record = os.path.join(database_dir, MANIFEST)
    if not os.path.lexists(record):
        return set()
    try:
        with open(record, encoding="utf-8") as f:
            written = set(json.load(f)["written"])
        if not all(isinstance(rel, str) and rel == os.path.normpath(rel) and not os.path.isabs(rel)
                   and not rel.startswith(os.pardir) for rel in written):
            raise ValueError("a path outside the folder")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FaceDatabaseError(f"{record}: not a readable face database record ({e}); move {database_dir} "
                                "away or choose another --database_root") from None
    return written


def _recorded(database_dir):
    """The files that earlier builds wrote in database_dir (its record), an empty set when there is no folder yet.
    FaceDatabaseError, one line, when the folder holds anything else or its record is not one."""
    if not os.path.lexists(database_dir):
        return set()
    if not os.path.isdir(database_dir):
        raise FaceDatabaseError(f"{database_dir}: the face database folder is not a folder; choose another "
                                "--database_root")
    written = _read_record(database_dir)

    def unlistable(e):
        raise FaceDatabaseError(f"{e.filename}: cannot list the face database folder ({e.strerror})")
    foreign = []
    for top, dirs, files in os.walk(database_dir, onerror=unlistable):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            rel = os.path.relpath(os.path.join(top, name), database_dir)
            if rel != MANIFEST and rel not in written and not name.startswith(".tmp-"):  # .tmp-: atomic_write's
                foreign.append(rel)
    if foreign:
        more = f" and {len(foreign) - 1} more files" if len(foreign) > 1 else ""
        raise FaceDatabaseError(f"{database_dir}: holds {os.path.join(database_dir, min(foreign))}{more} that no face "
                                "database build wrote; it is built only in a new folder or one it made: choose "
                                "another --database_root or move those files away")
    return written


def _record(database_dir, written):
    data = json.dumps({"written": sorted(written)}).encode()  # names that are not UTF-8: as \udcXX escapes
    atomic_write(os.path.join(database_dir, MANIFEST), lambda f: f.write(data))


def _remove(database_dir, rel):
    """Remove the file rel that a build wrote, then its folders up to database_dir while they are empty."""
    path = os.path.join(database_dir, rel)
    if os.path.isfile(path) and not os.path.islink(path) and _inside(os.path.dirname(path), database_dir):
        os.remove(path)
    folder = os.path.dirname(rel)
    while folder:
        try:
            os.rmdir(os.path.join(database_dir, folder))
        except OSError:  # not empty, or gone
            break
        folder = os.path.dirname(folder)


def _same_bytes(path, data):
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def build_database(normal_dir, database_dir, order="sorted", say=None):
    """Make database_dir hold exactly the chosen image of every identity of normal_dir (see the module's docstring),
    each re-saved as the published code does and written atomically. Removes only files that earlier builds wrote
    there; FaceDatabaseError, before anything is written, when the folder holds anything else. Returns
    [(identity, path in database_dir, the bytes written there or the message why the image was left out)], in
    the published order of the names for order='listdir'."""
    normal_real, database_real = os.path.realpath(normal_dir), os.path.realpath(database_dir)
    if os.path.commonpath([normal_real, database_real]) in (normal_real, database_real):
        raise FaceDatabaseError(f"{database_dir}: the database folder must not be {normal_dir}, inside it or above it")
    written = _recorded(database_dir)
    entries = []
    for identity, rel, dst in _chosen(normal_dir, order, say):
        try:
            entries.append((identity, dst, resaved(os.path.join(normal_dir, rel))))
        except ImageReadError as e:
            entries.append((identity, dst, str(e)))
    wanted = {dst for _, dst, data in entries if isinstance(data, bytes)}
    try:
        _record(database_dir, written | wanted)  # first: a build cut short leaves recorded files only
        for rel in sorted(written - wanted):
            _remove(database_dir, rel)
        for _, dst, data in entries:
            path = os.path.join(database_dir, dst)
            if isinstance(data, bytes) and not _same_bytes(path, data):
                atomic_write(path, lambda f: f.write(data))
        _record(database_dir, (_read_record(database_dir) - (written - wanted)) | wanted)  # and another run's
    except OSError as e:  # a full disk, a read-only folder
        raise FaceDatabaseError(f"{database_dir}: cannot write the face database ({e.strerror or e}); the files "
                                "written are whole and recorded, and the next run rebuilds it") from None
    if order == "listdir":  # the published names: the database folder's os.listdir order
        listing = {name: i for i, name in enumerate(os.listdir(database_dir))}
        entries.sort(key=lambda entry: listing.get(Path(entry[1]).parts[0], len(listing)))
    return entries


def _sha256(named_bytes):
    """sha256 of [(name, bytes)]: each name, size and content, in order."""
    h = hashlib.sha256()
    for name, data in named_bytes:
        h.update(os.fsencode(name.replace(os.sep, "/")) + f"\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def fingerprint(normal_dir, detector, facenet, order="sorted"):
    """Everything the encodings depend on: 'database' (the chosen images' bytes under their names in the database
    folder), the choice order, Pillow's version (it re-saves them), the detector's weights and settings, FaceNet's
    weights (its backbone included: the weight names differ), the alignment and the cache format."""
    chosen = _chosen(normal_dir, order)
    return {"format": CACHE_FORMAT, "order": order,
            "database": _sha256((dst, _read(os.path.join(normal_dir, rel))) for _, rel, dst in chosen),
            "pillow": PIL.__version__,
            "detector": {"weights": weights_sha256(detector.model), "confidence": detector.confidence,
                         "nms_iou": detector.nms_iou, "size": detector.size},
            "facenet": {"weights": weights_sha256(facenet), "network": type(facenet).__name__},
            "alignment": {"face_size": FACE_SIZE}}


def _read_cache(paths, expected, database_dir):
    """(encodings, names) when the fingerprint file records `expected`, the two files hold the bytes it recorded
    and the database folder the images it recorded; else None."""
    try:
        with open(paths["fingerprint"]) as f:
            stored = json.load(f)
        if {k: v for k, v in stored.items() if k != "files"} != expected:
            return None
        data = {}
        for kind in ("encoding", "name"):
            data[kind] = _read(paths[kind])
            if hashlib.sha256(data[kind]).hexdigest() != stored["files"][kind]:
                return None
        images = stored["files"]["database"]
        if _sha256((dst, _read(os.path.join(database_dir, dst))) for dst in images["names"]) != images["sha256"]:
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


def _decode(data, path):
    """HxWx3 uint8 RGB array of the image bytes `data` written to `path` (utils.images.read_image)."""
    try:
        return read_image(io.BytesIO(data))
    except (ImageReadError, TypeError):
        raise ImageReadError(f"{path}: cannot read the re-saved image") from None


def _encode(entries, database_dir, detector, facenet, device, batch_size):
    """(Nx128 float32 array, N names) of the database images `entries` (build_database's) that show a face."""
    encodings, names = [], []
    for start in tqdm(range(0, len(entries), batch_size), desc="face database", unit="batch"):
        images, readable = [], []
        for identity, dst, data in entries[start:start + batch_size]:
            try:
                if isinstance(data, str):
                    raise ImageReadError(data)
                images.append(_decode(data, os.path.join(database_dir, dst)))
                readable.append((identity, dst))
            except ImageReadError as e:
                tqdm.write(f"identity {identity} left out of the database: {e}")
        codes, kept = encode_faces(images, detector, facenet, device, batch_size)
        for i in sorted(set(range(len(images))) - set(kept)):
            identity, dst = readable[i]
            tqdm.write(f"identity {identity} left out of the database: no face found in "
                       f"{os.path.join(database_dir, dst)}")
        encodings.append(codes.float().cpu())
        names += [readable[i] for i in kept]
    if not names:
        raise FaceDatabaseError(f"{database_dir}: no face found in any database image")
    return torch.cat(encodings).numpy(), names


def load_encodings(normal_dir, database_dir, encoding_dir, name, detector, facenet, device, batch_size=32,
                   order="sorted"):
    """(float32 Nx128 tensor on device, N identity names): from the cache in encoding_dir when its fingerprint
    matches (see the module's docstring), else the database folder is rebuilt and the encodings recomputed from
    the re-saved images. order: 'sorted' or 'listdir' (the published choice). An identity whose database image
    shows no face is left out; FaceDatabaseError (a ValueError, one line) when no image shows a face, the database
    folder holds files no build wrote, or the database or the encodings cannot be written."""
    paths = {kind: os.path.join(encoding_dir, f"{name}_{kind}.{ext}")
             for kind, ext in (("encoding", "npy"), ("name", "npy"), ("fingerprint", "json"))}
    expected = fingerprint(normal_dir, detector, facenet, order)
    cached = _read_cache(paths, expected, database_dir)
    if cached is not None:
        return torch.from_numpy(cached[0]).float().to(device), cached[1]

    print(f"building the face database {database_dir} and its encodings in {encoding_dir}")
    entries = build_database(normal_dir, database_dir, order, say=print)
    if not entries:
        raise FaceDatabaseError(f"{normal_dir}: no images to build the face database from")
    encodings, kept = _encode(entries, database_dir, detector, facenet, device, batch_size)
    names = [identity for identity, _ in kept]
    data = {"encoding": _npy(encodings), "name": _npy(np.array(names, dtype=str))}
    written = {dst: image for _, dst, image in entries if isinstance(image, bytes)}
    files = {kind: hashlib.sha256(content).hexdigest() for kind, content in data.items()}
    files["database"] = {"names": list(written), "sha256": _sha256(written.items())}
    try:
        for kind, content in data.items():
            atomic_write(paths[kind], lambda f: f.write(content))
        atomic_write(paths["fingerprint"], lambda f: f.write(json.dumps({**expected, "files": files}).encode()))
    except OSError as e:  # a full disk: whole files only, and none that passes for a cache (their sha256 differ)
        raise FaceDatabaseError(f"{encoding_dir}: cannot write the face encodings ({e.strerror or e}); no cache was "
                                "left that passes for a complete one, the next run rebuilds it") from None
    return torch.from_numpy(encodings).to(device), names
