"""Evaluate a method's enhanced images: face identification on the recognition sets, image quality on the others.

    python eval.py --dataset_name CASIA-Test --method_name Ours --facenet_checkpoint checkpoint/facenet_mobilenet.pth
    python eval.py --dataset_name LFW --method_name Ours --compat      # no face = identity 0, as the published code
    python eval.py --dataset_name CelebA-Test --method_name Ours --lpips --fid
    python eval.py --dataset_name real --method_name Ours             # UNIQUE only: real has no normal/
    python eval.py --dataset_name samples                            # the bundled samples, after the README's first command

Reads dataset/NAME/SOTAs/METHOD. Recognition sets (CASIA-Test, LaPa-Test, LFW): the biggest face of every image
is matched against the face database of dataset/NAME/normal (utils.face_database, built on first use) by cosine
similarity; top-1 accuracy over all readable images, an image without a detected face counting as a miss (--compat:
as a prediction of identity 0). IQA sets (CelebA-Test, CelebA-Test-2, real, samples): PSNR and SSIM against normal/
(same relative path, or the same stem; identical images count as 100 dB), and UNIQUE when its checkpoint exists.
Each figure is printed with the number of images it covers and appended, with those numbers, as one line to
--log_path. Entries that are not images are passed over with a line each; an image that cannot be read or compared
gets a line and is left out of the figures it cannot enter. Exit status 1 when an image could not be read or
compared.
"""
import math
import os
import sys
from datetime import datetime

from utils.checks import (ArgumentParser, add_precision_flags, check_checkpoints, check_paths, device_name,
                          escape_unprintable_names, integer)

RECOGNITION_SETS = ("CASIA-Test", "LaPa-Test", "LFW")
IQA_SETS = ("CelebA-Test", "CelebA-Test-2", "real", "samples")  # samples: the bundled dataset/samples


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--dataset_name", choices=RECOGNITION_SETS + IQA_SETS, default="CASIA-Test", help="the data set, "
                   "DATASET_ROOT/NAME/{normal,SOTAs/METHOD}")
    p.add_argument("--dataset_root", default="dataset", help="the folder of the data sets")
    p.add_argument("--method_name", default="Ours", help="reads dataset/NAME/SOTAs/METHOD")
    p.add_argument("--log_path", default="log/eval.txt", help="one line per run is appended")
    p.add_argument("--facenet_checkpoint", default="checkpoint/facenet_mobilenet.pth", help="FaceNet weights "
                   "(recognition sets)")
    p.add_argument("--backbone", default="mobilenet", choices=["mobilenet", "inception_resnetv1"],
                   help="FaceNet's backbone")
    p.add_argument("--retinaface_checkpoint", default="checkpoint/Retinaface_mobilenet0.25.pth", help="RetinaFace "
                   "weights (recognition sets)")
    p.add_argument("--unique_checkpoint", default="checkpoint/unique.pt", help="UNIQUE weights (image quality sets; "
                   "UNIQUE is left out without them)")
    p.add_argument("--database_root", default="database", help="database/NAME holds the first image of each identity")
    p.add_argument("--encoding_root", default="encoding", help="cached database encodings")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch_size", type=integer(1), default=16, help="images per detector/FaceNet forward")
    p.add_argument("--num_workers", type=integer(0), default=2, help="image decoding threads (FID: its loader's "
                   "processes)")
    add_precision_flags(p)
    p.add_argument("--compat", action="store_true", help="count an image without a face as identity 0 (published rule)")
    p.add_argument("--lpips", action="store_true", help="also LPIPS (AlexNet) against normal/, needs the lpips package")
    p.add_argument("--fid", action="store_true", help="also FID of the two folders, needs the pytorch_fid package")
    return p.parse_args(argv)


def folders(args):
    """(the enhanced images, the normal-light images) of the data set."""
    dataset_dir = os.path.join(args.dataset_root, args.dataset_name)
    return os.path.join(dataset_dir, "SOTAs", args.method_name), os.path.join(dataset_dir, "normal")


def check_args(args):
    """Exit with one line, before any work, when the folders cannot work together (utils.checks.check_paths)."""
    images_dir, normal_dir = folders(args)
    recognition = args.dataset_name in RECOGNITION_SETS
    normal = [("the normal-light images" + (", from which the face database is built" if recognition else ""),
               normal_dir)]
    database = ("the face database folder (--database_root)", os.path.join(args.database_root, args.dataset_name))
    check_paths(reads=[("the enhanced images of --method_name; write them with test.py", images_dir)]
                + (normal if recognition else []), optional_reads=[] if recognition else normal,
                writes=[database, ("--encoding_root", args.encoding_root)] if recognition else [],
                logs=[("--log_path", args.log_path)])
    if recognition:
        check_checkpoints([("--retinaface_checkpoint", args.retinaface_checkpoint, "Retinaface_mobilenet0.25.pth"),
                           ("--facenet_checkpoint", args.facenet_checkpoint,
                            "facenet_mobilenet.pth" if args.backbone == "mobilenet" else None)])


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from nets.face_recognition import identify  # noqa: E402
from nets.facenet import load_facenet  # noqa: E402
from nets.retinaface import load_retinaface  # noqa: E402
from nets.unique import load_unique, unique_score  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402
from utils.data import Pairs, read_ahead  # noqa: E402
from utils.face_database import identity_of, load_encodings  # noqa: E402
from utils.images import list_images  # noqa: E402
from utils.metrics import PSNR_CAP, Average, psnr, ssim  # noqa: E402
from utils.runtime import autocast, keep_freed_memory, start_device  # noqa: E402


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
            detector, facenet, device, args.batch_size)
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")

    loader = read_ahead(Pairs(images_dir, files), args.batch_size, args.num_workers)
    correct, no_face, total = 0, 0, 0
    for batch in tqdm(loader, total=math.ceil(len(files) / args.batch_size), unit="batch", desc=args.dataset_name):
        good = [(rel, image) for rel, image, _ in batch if not record_failure(failed, image)]
        with torch.no_grad(), autocast(device, args.precision):
            predicted = identify([image for _, image in good], detector, facenet, encodings, names, device,
                                 args.batch_size)
        for (rel, _), name in zip(good, predicted):
            name = names[0] if name is None and args.compat else name  # published: no face = identity 0
            correct += name == identity_of(rel)
        no_face += predicted.count(None)
        total += len(good)
    rule = "counted as identity 0 (--compat)" if args.compat else "counted as misses"
    left_out = f", {len(files) - total} unreadable left out (named above)" if total < len(files) else ""
    print(f"top-1 accuracy {100 * correct / max(total, 1):.2f}% ({correct}/{total} images{left_out}, "
          f"{len(names)} identities in the database); {no_face} images without a detected face, {rule}")
    return {"top1": 100 * correct / max(total, 1), "correct": correct, "top1_images": total, "no_face": no_face,
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
    capped = 0  # images whose PSNR is PSNR_CAP: identical to their reference
    for batch in tqdm(loader, total=math.ceil(len(files) / args.batch_size), unit="batch", desc=args.dataset_name):
        for rel, image, ref in batch:
            if record_failure(failed, image):
                continue
            record_failure(failed, ref)
            x = image.to(device)
            if unique is not None:
                metrics["unique"].update(unique_score(unique, x, device))
            if not isinstance(ref, torch.Tensor):
                continue
            y = ref.to(device)
            value = psnr(x, y).item()
            metrics["psnr"].update(value)
            capped += value >= PSNR_CAP
            metrics["ssim"].update(ssim(x[None], y[None]).item())
            if lpips_net is not None:
                with torch.no_grad():
                    metrics["lpips"].update(lpips_net(x[None] * 2 - 1, y[None] * 2 - 1).item())
    results = {}
    for name, m in metrics.items():  # each figure with the number of images it covers
        if m.count:
            results.update({name: m.get_results(), f"{name}_images": m.count})
            note = f"; {len(files) - m.count} left out (named above)" if m.count < len(files) else ""
            if name == "psnr":
                results["psnr_capped"] = capped
                note += f"; {capped} at the {PSNR_CAP:g} dB cap (identical to their reference)"
            print(f"{name.upper()} {m.get_results():.4f} over {m.count} of {len(files)} images{note}")
    if args.fid and has_reference:
        fid = fid_score(images_dir, normal_dir, args, device)
        if fid is not None:
            results["fid"] = fid
            print(f"FID {fid:.4f} of the two folders")
    return results


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    escape_unprintable_names()
    device = start_device(args.device, args.precision)
    keep_freed_memory()
    images_dir, normal_dir = folders(args)
    files, _ = list_images(images_dir, say=print)
    if not files:
        sys.exit(f"error: {images_dir}: no image files")
    print(f"evaluating {len(files)} images of {images_dir} on {device}")

    failed = []
    if args.dataset_name in RECOGNITION_SETS:
        results = evaluate_recognition(args, files, images_dir, normal_dir, device, failed)
    else:
        results = evaluate_iqa(args, files, images_dir, normal_dir, device, failed)
    results.update(images=len(files), failed=len(failed))
    if failed:
        print(f"failed images: {len(failed)} (listed above)")

    line = " ".join([datetime.now().isoformat(timespec="seconds"), f"dataset={args.dataset_name}",
                     f"method={args.method_name}"]
                    + [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()])
    os.makedirs(os.path.dirname(os.path.abspath(args.log_path)), exist_ok=True)
    with open(args.log_path, "a", encoding="utf-8", errors="backslashreplace") as f:
        f.write(line + "\n")
    print(f"appended to {args.log_path}: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
