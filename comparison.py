"""eval.py's comparison of methods where networks take part: the verification protocol (FaceNet embeddings of the
pairs) and the comparison figure (faces found by RetinaFace). The pure parts are utils.verification, utils.compare
and utils.figures."""
import math
import os

import numpy as np
import torch
from tqdm import tqdm

from nets.face_recognition import encode_faces
from nets.retinaface import biggest_face
from utils.compare import INPUT, method_folder
from utils.data import Pairs, read_ahead
from utils.face_database import identity_of
from utils.figures import image_grid
from utils.images import ImageReadError, list_images, read_image
from utils.verification import FARS, make_pairs, read_pairs, resolve_pairs, roc, verification_figures, write_pairs


def by_stem(files):
    """{relative path without extension: relative path} of a folder's images."""
    return {os.path.splitext(rel)[0]: rel for rel in files}


def verification_pairs(args, set_files, pairs_path):
    """[(first, second, same, fold)] relative paths of the set: from --pairs, else drawn with --pairs_seed and written
    to pairs_path (for reuse with --pairs). ValueError (utils.verification.PairsError included) in one line."""
    identities = {}
    for rel in set_files:
        identities.setdefault(identity_of(rel), []).append(rel)
    if args.pairs:
        return resolve_pairs(read_pairs(args.pairs), identities, args.pairs)
    folds = make_pairs(identities, seed=args.pairs_seed)
    write_pairs(folds, pairs_path)
    print(f"pairs: {len(folds)} folds of {len(folds[0][0])} matched and {len(folds[0][1])} mismatched pairs drawn "
          f"with seed {args.pairs_seed}, written to {pairs_path} (reuse it with --pairs)")
    return resolve_pairs(folds, identities, pairs_path)


def embeddings(paths, detector, facenet, device, batch_size, failed):
    """{path: unit-length FaceNet embedding of the biggest face (CPU), or None without a face}; an unreadable image
    is recorded in `failed` (and printed) and maps to None."""
    out = dict.fromkeys(paths)
    for batch in tqdm(read_ahead(Pairs("", paths), batch_size, 2), total=math.ceil(len(paths) / batch_size),
                      unit="batch", desc="embeddings"):
        good = []
        for path, image, _ in batch:
            if isinstance(image, str):
                failed.append(image)
                tqdm.write(f"failed {image}")
            else:
                good.append((path, image))
        with torch.no_grad():
            codes, kept = encode_faces([image for _, image in good], detector, facenet, device, batch_size)
        for code, k in zip(torch.nn.functional.normalize(codes.float(), dim=1), kept):
            out[good[k][0]] = code
    return out


def evaluate_verification(args, files, images_dir, normal_dir, pairs, nets, gallery_cache, failed):
    """Verification figures (utils.verification.verification_figures) of the method in images_dir on `pairs`: the
    first image of a pair from images_dir, the second from images_dir or, with --gallery normal, from normal_dir
    (its embeddings kept in gallery_cache across methods). A pair whose image is missing from the method's folder
    is left out; one without a detected face (or unreadable) scores -1, the lowest cosine similarity. Returns
    (figures, (FAR, TAR))."""
    detector, facenet, device = nets
    have, normal = by_stem(files), by_stem(list_images(normal_dir)[0])
    probe = lambda rel: have.get(os.path.splitext(rel)[0])
    second = (lambda rel: normal.get(os.path.splitext(rel)[0])) if args.gallery == "normal" else probe
    second_dir = normal_dir if args.gallery == "normal" else images_dir
    usable = [(probe(a), second(b), same, fold) for a, b, same, fold in pairs if probe(a) and second(b)]
    if not usable:
        raise ValueError(f"{images_dir}: holds no image of the verification pairs")
    wanted = sorted({os.path.join(images_dir, a) for a, *_ in usable}
                    | {os.path.join(second_dir, b) for _, b, *_ in usable} - set(gallery_cache))
    codes = embeddings(wanted, detector, facenet, device, args.batch_size, failed)
    if args.gallery == "normal":
        gallery_cache.update({p: c for p, c in codes.items() if p.startswith(os.path.join(normal_dir, ""))})
    codes.update(gallery_cache)
    scores, faceless = [], 0
    for a, b, _, _ in usable:
        x, y = codes[os.path.join(images_dir, a)], codes[os.path.join(second_dir, b)]
        faceless += x is None or y is None
        scores.append(-1.0 if x is None or y is None else float(x @ y))
    figures = verification_figures(scores, [p[2] for p in usable], [p[3] for p in usable])
    figures.update(faceless_pairs=faceless, left_out_pairs=len(pairs) - len(usable))
    far_tar = roc(scores, [p[2] for p in usable])
    tar = "; ".join(f"TAR@FAR {far:.0e}".replace("e-0", "e-") + " " + (
        f"{figures[f'tar_at_far_{far:g}']:.2f}%" if figures[f"tar_at_far_{far:g}"] is not None
        else f"not computed ({figures['mismatched']} mismatched pairs, {round(1 / far)} needed)") for far in FARS)
    print(f"verification accuracy {figures['accuracy']:.2f}% ± {figures['accuracy_std']:.2f} over {figures['folds']} "
          f"folds ({figures['matched']} matched, {figures['mismatched']} mismatched pairs, gallery: {args.gallery}"
          + (f", {len(pairs) - len(usable)} pairs left out: image missing" if len(usable) < len(pairs) else "")
          + f"); AUC {figures['auc']:.4f}; {tar}; {faceless} pairs with an image without a detected face (scored -1)")
    return figures, far_tar


def figure_rows(set_files, chosen):
    """The relative paths of the figure's rows: the first N of the set (chosen = ['N']) or the named images (by
    relative path or stem); ValueError naming one that is not in the set."""
    if len(chosen) == 1 and chosen[0].isdigit():
        return set_files[:int(chosen[0])]
    stems = by_stem(set_files)
    rows = []
    for name in chosen:
        rel = name if name in set_files else stems.get(os.path.splitext(name)[0])
        if rel is None:
            raise ValueError(f"--figure_images {name}: not an image of the set")
        rows.append(rel)
    return rows


def comparison_figure(dataset_dir, methods, rows, detector):
    """(HxWx3 uint8 grid, notes): one row per relative path of `rows`, columns Input (where the set has
    underexposed/) | methods | normal (where it has normal/), each image found by stem (a grey square where a folder
    lacks it); with a detector, the biggest face found in the row's normal image (else its last column) enlarged
    from every column."""
    has_input = os.path.isdir(method_folder(dataset_dir, INPUT))
    columns = [INPUT] * has_input + [m for m in methods if m != INPUT]
    folders = [method_folder(dataset_dir, m) for m in columns]
    if os.path.isdir(os.path.join(dataset_dir, "normal")):
        columns, folders = columns + ["normal"], folders + [os.path.join(dataset_dir, "normal")]
    stems = [by_stem(list_images(folder)[0]) if os.path.isdir(folder) else {} for folder in folders]
    grid, faces, notes = [], [], []
    for rel in rows:
        images = []
        for folder, have in zip(folders, stems):
            found = have.get(os.path.splitext(rel)[0])
            try:
                images.append(read_image(os.path.join(folder, found)) if found else None)
            except ImageReadError as e:
                notes.append(str(e))
                images.append(None)
        reference = next((im for im in reversed(images) if im is not None), None)
        if reference is None:
            raise ValueError(f"{rel}: no column of the figure holds this image")
        images = [im if im is not None else np.full_like(reference, 128) for im in images]
        grid.append(images)
        row = biggest_face(detector.detect([reference])[0]) if detector is not None else None
        faces.append(None if row is None else [float(v) for v in row[:4]])
        if detector is not None and row is None:
            notes.append(f"{rel}: no face found in its {columns[-1]} image; no enlarged face beside its row")
    return image_grid(grid, columns, faces if detector is not None else None,
                      row_labels=[os.path.splitext(os.path.basename(r))[0] for r in rows]), notes
