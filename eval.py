"""Evaluate a method's enhanced images: face identification on the recognition sets, image quality on the others.

    python eval.py --dataset_name CASIA-Test --method_name Ours --facenet_checkpoint checkpoint/facenet_mobilenet.pth
    python eval.py --dataset_name LFW --method_name Ours --compat      # no face = identity 0, as the published code
    python eval.py --dataset_name CelebA-Test --method_name Ours --lpips --fid
    python eval.py --dataset_name real --method_name Ours             # UNIQUE only: real has no normal/
    python eval.py --dataset_name samples                            # the bundled samples, after the README's first command

Reads dataset/NAME/SOTAs/METHOD. Recognition sets (CASIA-Test, LaPa-Test, LFW): the biggest face of every image
is matched against the face database of dataset/NAME/normal (utils.face_database, built on first use) by cosine
similarity; top-1 accuracy over all images, an image without a detected face counting as a miss (--compat: as a
prediction of identity 0). IQA sets (CelebA-Test, CelebA-Test-2, real, samples): PSNR and SSIM against normal/ (same
relative path, or the same stem), and UNIQUE when its checkpoint exists. The results are printed and appended
as one line to --log_path. Files that are not images are passed over with a line each; an image that cannot be
read or compared gets a line and is left out of the means. Exit status 1 when an image could not be read or compared.
"""
import argparse
import math
import os
import sys
from datetime import datetime

import torch
from tqdm import tqdm

from nets.face_recognition import identify
from nets.facenet import load_facenet
from nets.retinaface import load_retinaface
from nets.unique import load_unique, unique_score
from utils.checkpoint import CheckpointError
from utils.data import Pairs, read_ahead
from utils.face_database import identity_of, load_encodings
from utils.images import list_images
from utils.metrics import Average, psnr, ssim
from utils.runtime import keep_freed_memory, resolve_device

RECOGNITION_SETS = ("CASIA-Test", "LaPa-Test", "LFW")
IQA_SETS = ("CelebA-Test", "CelebA-Test-2", "real", "samples")  # samples: the bundled dataset/samples


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset_name", choices=RECOGNITION_SETS + IQA_SETS, default="CASIA-Test")
    p.add_argument("--dataset_root", default="dataset")
    p.add_argument("--method_name", default="Ours", help="reads dataset/NAME/SOTAs/METHOD")
    p.add_argument("--log_path", default="log/eval.txt", help="one line per run is appended")
    p.add_argument("--facenet_checkpoint", default="checkpoint/facenet_mobilenet.pth")
    p.add_argument("--backbone", default="mobilenet", choices=["mobilenet", "inception_resnetv1"])
    p.add_argument("--retinaface_checkpoint", default="checkpoint/Retinaface_mobilenet0.25.pth")
    p.add_argument("--unique_checkpoint", default="checkpoint/unique.pt")
    p.add_argument("--database_root", default="database", help="database/NAME holds the first image of each identity")
    p.add_argument("--encoding_root", default="encoding", help="cached database encodings")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch_size", type=int, default=16, help="images per detector/FaceNet forward")
    p.add_argument("--num_workers", type=int, default=2, help="image decoding threads (FID: its loader's processes)")
    p.add_argument("--compat", action="store_true", help="count an image without a face as identity 0 (published rule)")
    p.add_argument("--lpips", action="store_true", help="also LPIPS (AlexNet) against normal/, needs the lpips package")
    p.add_argument("--fid", action="store_true", help="also FID of the two folders, needs the pytorch_fid package")
    return p.parse_args(argv)


def record_failure(failed, item):
    """True (and the message printed and kept) when a loaded item is an error message instead of an image."""
    if isinstance(item, str):
        failed.append(item)
        tqdm.write(f"failed {item}")
    return isinstance(item, str)


def evaluate_recognition(args, files, images_dir, normal_dir, device, failed):
    """Top-1 identification of every image against the database of normal_dir."""
    known = {identity_of(rel) for rel in list_images(normal_dir)[0]}
    for rel in files:
        if identity_of(rel) not in known:
            sys.exit(f"error: {os.path.join(images_dir, rel)}: identity {identity_of(rel)} is not in {normal_dir}")
    try:
        detector = load_retinaface(args.retinaface_checkpoint, device)
        facenet = load_facenet(args.facenet_checkpoint, args.backbone, device)
        encodings, names = load_encodings(
            normal_dir, os.path.join(args.database_root, args.dataset_name), args.encoding_root, args.dataset_name,
            detector, facenet, args.facenet_checkpoint, device, args.batch_size)
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")

    loader = read_ahead(Pairs(images_dir, files), args.batch_size, args.num_workers)
    correct, no_face, total = 0, 0, 0
    for batch in tqdm(loader, total=math.ceil(len(files) / args.batch_size), unit="batch", desc=args.dataset_name):
        good = [(rel, image) for rel, image, _ in batch if not record_failure(failed, image)]
        predicted = identify([image for _, image in good], detector, facenet, encodings, names, device, args.batch_size)
        for (rel, _), name in zip(good, predicted):
            name = names[0] if name is None and args.compat else name  # published: no face = identity 0
            correct += name == identity_of(rel)
        no_face += predicted.count(None)
        total += len(good)
    rule = "counted as identity 0 (--compat)" if args.compat else "counted as misses"
    print(f"top-1 accuracy {100 * correct / max(total, 1):.2f}% ({correct}/{total} images, "
          f"{len(names)} identities in the database); {no_face} images without a detected face, {rule}")
    return {"top1": 100 * correct / max(total, 1), "correct": correct, "images": total, "no_face": no_face,
            "compat": int(args.compat)}


def lpips_model(device):
    """LPIPS (AlexNet) or None with one line saying why it is skipped."""
    try:
        import lpips
        return lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as e:  # package absent, or its AlexNet weights cannot be downloaded
        print(f"LPIPS skipped: needs the lpips package and its AlexNet weights ({type(e).__name__}: {e})")
        return None


def fid_score(images_dir, normal_dir, args, device):
    """FID of the two folders with pytorch_fid, or None with one line saying why it is skipped."""
    try:
        from pytorch_fid.fid_score import calculate_fid_given_paths
        return calculate_fid_given_paths([images_dir, normal_dir], args.batch_size, device, 2048, args.num_workers)
    except Exception as e:  # package absent, Inception weights cannot be downloaded, folder layout it cannot read
        print(f"FID skipped: needs the pytorch_fid package and its Inception weights ({type(e).__name__}: {e})")
        return None


def evaluate_iqa(args, files, images_dir, normal_dir, device, failed):
    """Mean PSNR and SSIM against normal_dir (when it exists), UNIQUE, and optionally LPIPS and FID."""
    has_reference = os.path.isdir(normal_dir)
    if not has_reference:
        print(f"no reference folder {normal_dir}: PSNR, SSIM, LPIPS and FID skipped")
    unique = None
    if os.path.isfile(args.unique_checkpoint):
        try:
            unique = load_unique(args.unique_checkpoint, device)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
    else:
        print(f"UNIQUE skipped: {args.unique_checkpoint} not found (the published model.pt of "
              "github.com/zwx8981/UNIQUE, saved as unique.pt)")
    lpips_net = lpips_model(device) if args.lpips and has_reference else None

    loader = read_ahead(Pairs(images_dir, files, normal_dir if has_reference else None, as_tensor=True),
                        args.batch_size, args.num_workers)
    metrics = {name: Average() for name in ("psnr", "ssim", "unique", "lpips")}
    scored = 0
    for batch in tqdm(loader, total=math.ceil(len(files) / args.batch_size), unit="batch", desc=args.dataset_name):
        for rel, image, ref in batch:
            if record_failure(failed, image):
                continue
            record_failure(failed, ref)
            scored += 1
            x = image.to(device)
            if unique is not None:
                metrics["unique"].update(unique_score(unique, x, device))
            if not isinstance(ref, torch.Tensor):
                continue
            y = ref.to(device)
            metrics["psnr"].update(psnr(x, y).item())
            metrics["ssim"].update(ssim(x[None], y[None]).item())
            if lpips_net is not None:
                with torch.no_grad():
                    metrics["lpips"].update(lpips_net(x[None] * 2 - 1, y[None] * 2 - 1).item())
    results = {name: m.get_results() for name, m in metrics.items() if m.count}
    if args.fid and has_reference:
        fid = fid_score(images_dir, normal_dir, args, device)
        if fid is not None:
            results["fid"] = fid
    results["images"] = scored
    print("  ".join(f"{name.upper()} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                    for name, value in results.items()))
    return results


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    keep_freed_memory()
    dataset_dir = os.path.join(args.dataset_root, args.dataset_name)
    images_dir = os.path.join(dataset_dir, "SOTAs", args.method_name)
    normal_dir = os.path.join(dataset_dir, "normal")
    if not os.path.isdir(images_dir):
        sys.exit(f"error: {images_dir}: folder of enhanced images not found (write it with test.py)")
    files, others = list_images(images_dir)
    if not files:
        sys.exit(f"error: {images_dir}: no image files")
    for rel in others:
        print(f"skipped {os.path.join(images_dir, rel)}: not an image file")
    print(f"evaluating {len(files)} images of {images_dir} on {device}")

    failed = []
    if args.dataset_name in RECOGNITION_SETS:
        if not os.path.isdir(normal_dir):
            sys.exit(f"error: {normal_dir}: normal-light folder not found (the face database is built from it)")
        results = evaluate_recognition(args, files, images_dir, normal_dir, device, failed)
    else:
        results = evaluate_iqa(args, files, images_dir, normal_dir, device, failed)
    results["failed"] = len(failed)
    if failed:
        print(f"failed images: {len(failed)} (listed above)")

    line = " ".join([datetime.now().isoformat(timespec="seconds"), f"dataset={args.dataset_name}",
                     f"method={args.method_name}"]
                    + [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()])
    os.makedirs(os.path.dirname(os.path.abspath(args.log_path)), exist_ok=True)
    with open(args.log_path, "a") as f:
        f.write(line + "\n")
    print(f"appended to {args.log_path}: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
