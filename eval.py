"""Evaluate methods' enhanced images: face identification (or verification) on the recognition sets, image quality
on the others; several methods and data sets in one comparison table.

    python eval.py --dataset_name CASIA-Test --method_name Ours --facenet_checkpoint checkpoint/facenet_mobilenet.pth
    python eval.py --dataset_name LFW --method_name Ours --compat      # the published figure (see --compat)
    python eval.py --dataset_name CelebA-Test --method_name Ours --lpips --fid
    python eval.py --dataset_name real --method_name Ours             # UNIQUE only: real has no normal/
    python eval.py --dataset_name samples             # the bundled samples, after the README's first command
    python eval.py --dataset_name CASIA-Test LaPa-Test --method_name all --figure   # results/compare/compare.md
    python eval.py --dataset_name CASIA-Test --method_name all --protocol verification --gallery normal

Reads dataset/NAME/SOTAs/METHOD (`Input`: the dark input, dataset/NAME/underexposed; `all`: every folder under
SOTAs/ plus Input). Recognition sets (CASIA-Test, LaPa-Test, LFW): the biggest face of every image, cut from the
image tensor as the published prediction (and the face loss) does, is matched against the face database of
dataset/NAME/normal (utils.face_database, built on first use) by cosine similarity; top-1 accuracy over all readable
images, an image without a detected face counting as a miss. --compat: the published rules, which reproduce the
published script's figure on the same folders and file system: the database keeps the first image of each identity
in os.listdir order (not sorted), an image without a face is a prediction of identity 0, and the published average
(per batch of 4 in os.listdir order) is printed beside the per-image accuracy. --protocol verification: pairs in
LFW's pairs.txt format (--pairs, or drawn with --pairs_seed and written beside the results), 10-fold accuracy, ROC
AUC, TAR at FAR 1e-2 and 1e-3, ROC figure.
IQA sets (CelebA-Test, CelebA-Test-2, real, samples): PSNR and SSIM against normal/ (same relative path, or the same
stem; identical images count as 100 dB), and UNIQUE when its checkpoint exists. Each figure is printed with the
number of images it covers and appended, with those numbers, as one line to --log_path. With several methods or
sets (or `all`), --compare_path gets compare.md/.csv/.json: methods as rows, sets x metrics as columns, the best
value of each column in bold, a blank cell with a footnote where a figure cannot be had. A method folder that
lacks images of the set (underexposed/, else normal/ for the IQA sets) is not scored (a warning, exit status 1)
unless --partial, or `all`, which scores it on what it has and says how many. Entries that are not images are
passed over with a line each; an image that cannot be read or compared gets a line and is left out of the figures
it cannot enter. Exit status 1 when an image could not be read or compared, a method folder was partial, or
nothing was measured.
"""
import argparse
import importlib.util
import math
import os
import sys
from datetime import datetime

from utils.checks import (ArgumentParser, add_precision_flags, check_checkpoints, check_paths, device_name,
                          escape_unprintable_names, integer)
from utils.compare import INPUT, METRICS, method_folder, method_names, missing_images

RECOGNITION_SETS = ("CASIA-Test", "LaPa-Test", "LFW")
IQA_SETS = ("CelebA-Test", "CelebA-Test-2", "real", "samples")  # samples: the bundled dataset/samples


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--dataset_name", nargs="+", choices=RECOGNITION_SETS + IQA_SETS, default=["CASIA-Test"],
                   help="one or several data sets")
    p.add_argument("--dataset_root", default="dataset", help="the folder of the data sets")
    p.add_argument("--method_name", nargs="+", default=["Ours"], help="reads dataset/NAME/SOTAs/METHOD; several "
                   "names, Input (the dark input, NAME/underexposed), or all (every folder of SOTAs/ and Input)")
    p.add_argument("--partial", action="store_true", help="score a method folder that lacks images of the set on "
                   "what it has (the summary says N of M); without it such a folder is a warning and exit status 1")
    p.add_argument("--compare_path", default="results/compare", help="compare.md/.csv/.json (several methods or "
                   "sets), the figures and the drawn pairs are written here")
    p.add_argument("--protocol", choices=["identification", "verification"], default="identification",
                   help="on the recognition sets: top-1 identification, or verification of pairs")
    p.add_argument("--pairs", help="verification pairs in LFW's pairs.txt format (default: drawn from the set with "
                   "--pairs_seed and written to --compare_path/pairs_NAME.txt)")
    p.add_argument("--pairs_seed", type=integer(0), default=0, help="the seed of drawn verification pairs")
    p.add_argument("--gallery", choices=["method", "normal"], default="method", help="verification: the second "
                   "image of a pair from the method's folder, or from normal/ (an enhanced probe against a "
                   "normal-light gallery, the paper's setting)")
    p.add_argument("--figure", action="store_true", help="also a PNG grid per set in --compare_path: input | "
                   "methods | normal, with each row's face (found by RetinaFace in normal/) enlarged")
    p.add_argument("--figure_images", nargs="+", default=["4"], help="the figure's rows: a number N (the first N "
                   "images of the set) or image names")
    p.add_argument("--log_path", default="log/eval.txt", help="one line per method and set is appended")
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
    p.add_argument("--batch_size", type=integer(1), default=None, help="images per detector/FaceNet forward "
                   "(default: 64 on a GPU, 16 elsewhere)")
    p.add_argument("--num_workers", type=integer(0), default=2, help="image decoding threads (FID: its loader's "
                   "processes)")
    add_precision_flags(p)
    p.add_argument("--compat", action="store_true", help="the published rules: database images chosen in os.listdir "
                   "order, no face = identity 0, and the published average (per batch of 4)")
    p.add_argument("--lpips", action="store_true", help="also LPIPS (AlexNet) against normal/, needs the lpips package")
    p.add_argument("--fid", action="store_true", help="also FID of the two folders, needs the pytorch_fid package")
    return p.parse_args(argv)


UNIQUE_FIX = "`python -m utils.download` fetches it with the published models (UNIQUE's model.pt, as unique.pt)"


def dataset_dir(args, dataset):
    return os.path.join(args.dataset_root, dataset)


def folders(args):
    """(the enhanced images, the normal-light images) of args.method_name on args.dataset_name."""
    return (method_folder(dataset_dir(args, args.dataset_name), args.method_name),
            os.path.join(dataset_dir(args, args.dataset_name), "normal"))


def methods_of(args, dataset):
    """The methods scored on `dataset`: --method_name, or every one the set has for `all`."""
    return method_names(dataset_dir(args, dataset)) if args.method_name == ["all"] else args.method_name


def writes_comparison(args):
    """Whether the run writes into --compare_path: a table (several methods or sets, or all), figures, ROC curves."""
    return (len(args.dataset_name) > 1 or len(args.method_name) > 1 or args.method_name == ["all"] or args.figure
            or args.protocol == "verification")


def check_metrics(args):
    """Exit with one line when a figure asked for explicitly cannot be computed, or when nothing can be measured."""
    has_normal = lambda d: os.path.isdir(os.path.join(dataset_dir(args, d), "normal"))
    iqa = [d for d in args.dataset_name if d in IQA_SETS]
    if args.protocol == "verification" and iqa:
        sys.exit(f"error: --protocol verification applies to the recognition sets ({', '.join(RECOGNITION_SETS)}), "
                 f"not {iqa[0]}")
    for flag, needs in (("gallery", args.gallery == "normal"), ("pairs", args.pairs), ("pairs_seed", args.pairs_seed)):
        if needs and args.protocol != "verification":
            sys.exit(f"error: --{flag} applies to --protocol verification only")
    if args.pairs and len(args.dataset_name) > 1:
        sys.exit("error: --pairs holds the pairs of one set: give a single --dataset_name")
    if args.pairs and not os.path.isfile(args.pairs):
        sys.exit(f"error: {args.pairs}: file not found (--pairs); without --pairs they are drawn and written")
    for flag, package in (("lpips", "lpips"), ("fid", "pytorch_fid")):
        if getattr(args, flag) and not any(has_normal(d) for d in iqa):
            sys.exit(f"error: --{flag} compares with normal/ images of an IQA set ({', '.join(IQA_SETS)}); none given")
        if getattr(args, flag) and importlib.util.find_spec(package) is None:
            sys.exit(f"error: --{flag} needs the {package} package, which is not installed: pip install {package}")
    only_unique = [d for d in iqa if not has_normal(d)]
    if only_unique and not os.path.isfile(args.unique_checkpoint) and (
            args.method_name != ["all"] or len(only_unique) == len(args.dataset_name)):
        sys.exit(f"error: {only_unique[0]} has no normal/ images, so UNIQUE is its only figure, and "
                 f"{args.unique_checkpoint} is not found (--unique_checkpoint): {UNIQUE_FIX}")


def check_args(args):
    """Exit with one line, before any work, when a figure asked for cannot be computed (check_metrics) or the folders
    cannot work together (utils.checks.check_paths)."""
    if "all" in args.method_name and len(args.method_name) > 1:
        sys.exit("error: --method_name all stands alone (it scores every method folder)")
    reads, optional, writes = [], [], []
    for dataset in args.dataset_name:
        root = dataset_dir(args, dataset)
        methods = methods_of(args, dataset)
        if not methods:
            sys.exit(f"error: {root}: neither SOTAs/ method folders nor underexposed/ to score (--method_name all); "
                     f"fetch the set with `python -m utils.download --datasets {dataset}`")
        reads += [("the dark input (--method_name Input)" if m == INPUT else "the enhanced images of --method_name; "
                   "write them with test.py or utils.baselines", method_folder(root, m)) for m in methods]
        normal = ("the normal-light images" + (", from which the face database is built"
                                              if dataset in RECOGNITION_SETS else ""), os.path.join(root, "normal"))
        if dataset in RECOGNITION_SETS:
            reads.append(normal)
            writes += [("the face database folder (--database_root)", os.path.join(args.database_root, dataset))]
        else:
            optional.append(normal)
    writes += [("--encoding_root", args.encoding_root)] if any(d in RECOGNITION_SETS for d in args.dataset_name) else []
    writes += [("--compare_path", args.compare_path)] if writes_comparison(args) else []
    check_paths(reads=reads, optional_reads=optional, writes=writes, logs=[("--log_path", args.log_path)])
    check_metrics(args)  # after the folders: a missing data set is named as such, not as a figure it cannot give
    if any(d in RECOGNITION_SETS for d in args.dataset_name):
        check_checkpoints([("--retinaface_checkpoint", args.retinaface_checkpoint, "Retinaface_mobilenet0.25.pth"),
                           ("--facenet_checkpoint", args.facenet_checkpoint,
                            "facenet_mobilenet.pth" if args.backbone == "mobilenet" else None)])


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import comparison  # noqa: E402
from nets.face_recognition import identify  # noqa: E402
from nets.facenet import load_facenet  # noqa: E402
from nets.retinaface import load_retinaface  # noqa: E402
from nets.unique import load_unique, unique_score  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402
from utils.compare import write_comparison  # noqa: E402
from utils.data import Pairs, read_ahead  # noqa: E402
from utils.face_database import identity_of, listdir_order, load_encodings  # noqa: E402
from utils.figures import roc_figure  # noqa: E402
from utils.images import list_images, write_image  # noqa: E402
from utils.metrics import PSNR_CAP, Average, batch_mean_accuracy, psnr, ssim  # noqa: E402
from utils.runtime import autocast, keep_freed_memory, start_device  # noqa: E402
from utils.verification import FARS  # noqa: E402

# -----------------------------------------------------------------------------
# networks and databases loaded once per run, shared by every method scored

_shared = {}


def shared(key, make):
    """make() at the first call with `key` in this run, the same object after (main() empties the store)."""
    if key not in _shared:
        _shared[key] = make()
    return _shared[key]


def face_detector(args, device):
    """The RetinaFace detector of the run, loaded once; a checkpoint that cannot be loaded exits in one line."""
    def load():
        try:
            return load_retinaface(args.retinaface_checkpoint, device)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
    return shared("detector", load)


def face_nets(args, device):
    """(RetinaFace detector, FaceNet) of the run, loaded once; a checkpoint that cannot be loaded exits in one line."""
    def load():
        try:
            return load_facenet(args.facenet_checkpoint, args.backbone, device)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
    return face_detector(args, device), shared("facenet", load)


def face_database(args, normal_dir, device):
    """(detector, FaceNet, encodings, names) of the set's face database (utils.face_database), built once per set."""
    detector, facenet = face_nets(args, device)

    order = "listdir" if args.compat else "sorted"  # --compat: the published choice of each identity's image

    def load():
        try:
            return load_encodings(normal_dir, os.path.join(args.database_root, args.dataset_name), args.encoding_root,
                                  args.dataset_name, detector, facenet, device, args.batch_size, order)
        except ValueError as e:
            sys.exit(f"error: {e}")
    return (detector, facenet, *shared(("database", args.dataset_name), load))


def record_failure(failed, item):
    """True (and the message printed and kept) when a loaded item is an error message instead of an image."""
    if isinstance(item, str):
        failed.append(item)
        tqdm.write(f"failed {item}")
    return isinstance(item, str)


def evaluate_recognition(args, files, images_dir, normal_dir, device, failed):
    """Top-1 identification of every image against the database of normal_dir, by the published prediction path
    (nets.face_recognition.identify). --compat: the published database choice (os.listdir order), the images in
    the published loader's order, no face = identity 0, and the published average beside the per-image one."""
    known = {identity_of(rel) for rel in list_images(normal_dir)[0]}
    for rel in files:
        if identity_of(rel) not in known:
            sys.exit(f"error: {os.path.join(images_dir, rel)}: identity {identity_of(rel)} is not in {normal_dir}")
    detector, facenet, encodings, names = face_database(args, normal_dir, device)  # shared by the methods of a run

    if args.compat:  # the published DataLoader's order: its batches of 4 make the published average
        files = listdir_order(images_dir, files)
    loader = read_ahead(Pairs(images_dir, files), args.batch_size, args.num_workers)
    hits, no_face = [], 0  # per readable image, in the order of files
    for batch in tqdm(loader, total=math.ceil(len(files) / args.batch_size), unit="batch", desc=args.dataset_name):
        good = [(rel, image) for rel, image, _ in batch if not record_failure(failed, image)]
        with torch.no_grad(), autocast(device, args.precision):
            predicted = identify([image for _, image in good], detector, facenet, encodings, names, device,
                                 args.batch_size)
        for (rel, _), name in zip(good, predicted):
            name = names[0] if name is None and args.compat else name  # published: no face = identity 0
            hits.append(name == identity_of(rel))
        no_face += predicted.count(None)
    correct, total = sum(hits), len(hits)
    rule = "counted as identity 0 (--compat)" if args.compat else "counted as misses"
    left_out = f", {len(files) - total} unreadable left out (named above)" if total < len(files) else ""
    print(f"top-1 accuracy {100 * correct / max(total, 1):.2f}% ({correct}/{total} images{left_out}, "
          f"{len(names)} identities in the database); {no_face} images without a detected face, {rule}")
    results = {"top1": 100 * correct / max(total, 1), "correct": correct, "top1_images": total, "no_face": no_face,
               "compat": int(args.compat)}
    if args.compat:
        results["top1_published"] = batch_mean_accuracy(hits)
        print(f"{args.dataset_name} accuracy: {results['top1_published']} (the published figure: the mean of "
              f"{math.ceil(total / 4)} batches' accuracies, batches of 4 in os.listdir order)")
    return results


def lpips_model(device):
    """LPIPS (AlexNet), loaded once per run; asked for explicitly (--lpips), so a failure exits in one line."""
    def load():
        try:
            import lpips
            return lpips.LPIPS(net="alex", verbose=False).to(device).eval()
        except Exception as e:  # its AlexNet weights cannot be downloaded, or a broken install
            sys.exit(f"error: --lpips: LPIPS cannot be loaded ({type(e).__name__}: {e}); it needs the lpips "
                     "package and torchvision's AlexNet weights (downloaded once)")
    return shared("lpips", load)


def fid_score(images_dir, normal_dir, args, device):
    """FID of the two folders with pytorch_fid; asked for explicitly (--fid), so a failure exits in one line."""
    try:
        from pytorch_fid.fid_score import calculate_fid_given_paths
        return calculate_fid_given_paths([images_dir, normal_dir], args.batch_size, device, 2048, args.num_workers)
    except Exception as e:  # Inception weights cannot be downloaded, a folder layout it cannot read
        sys.exit(f"error: --fid: FID of {images_dir} cannot be computed ({type(e).__name__}: {e}); it needs the "
                 "pytorch_fid package and its Inception weights (downloaded once), and flat folders of images")


def unique_model(args, device):
    """UNIQUE, loaded once per run, or None (with one line, once, naming the fix) when its checkpoint is absent."""
    def load():
        if not os.path.isfile(args.unique_checkpoint):
            print(f"UNIQUE not computed: {args.unique_checkpoint} not found (--unique_checkpoint); {UNIQUE_FIX}")
            return None
        try:
            return load_unique(args.unique_checkpoint, device)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
    return shared("unique", load)


def evaluate_iqa(args, files, images_dir, normal_dir, device, failed):
    """Mean PSNR and SSIM against normal_dir (when it exists), UNIQUE, and optionally LPIPS and FID."""
    has_reference = os.path.isdir(normal_dir)
    if not has_reference:
        print(f"no reference folder {normal_dir}: PSNR, SSIM, LPIPS and FID not computed")
    unique = unique_model(args, device)
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
        results["fid"] = fid_score(images_dir, normal_dir, args, device)
        print(f"FID {results['fid']:.4f} of the two folders")
    return results


# -----------------------------------------------------------------------------
# one method on one set; then the table and figures of all


def set_images(args, dataset):
    """(folder, relative paths) of the images every method folder of the set should hold: underexposed/, else
    normal/ for the IQA sets; (None, []) when the set has neither (coverage is then not checked)."""
    for folder in ("underexposed",) + (("normal",) if dataset in IQA_SETS else ()):
        path = os.path.join(dataset_dir(args, dataset), folder)
        if os.path.isdir(path):
            return shared(("set", dataset), lambda: (path, list_images(path)[0]))
    return None, []


def verification_pairs(args, normal_dir):
    """The set's verification pairs (comparison.verification_pairs), made once per set."""
    def load():
        files = set_images(args, args.dataset_name)[1] or list_images(normal_dir)[0]
        try:
            return comparison.verification_pairs(args, files, os.path.join(args.compare_path,
                                                                            f"pairs_{args.dataset_name}.txt"))
        except ValueError as e:
            sys.exit(f"error: {e}")
    return shared(("pairs", args.dataset_name), load)


def score_method(args, device, roc_curves):
    """Score one method (args.method_name) on one set (args.dataset_name), print and log its figures: the results,
    or None when its folder is empty or lacks images of the set (unless --partial or all)."""
    images_dir, normal_dir = folders(args)
    print(f"== {args.dataset_name}: {args.method_name}")
    files, _ = list_images(images_dir, say=print)
    if not files:
        if not args.every:
            sys.exit(f"error: {images_dir}: no image files")
        print(f"warning: {images_dir}: no image files; not scored")
        return None
    set_dir, set_files = set_images(args, args.dataset_name)
    missing = missing_images(set_files, files) if images_dir != set_dir else []
    if missing:
        scored = args.partial or args.every
        print(f"warning: {images_dir} holds {len(set_files) - len(missing)} of the {len(set_files)} images of "
              f"{set_dir} ({len(missing)} missing, e.g. {missing[0]}); "
              + ("scored on what it has" if scored else "not scored: finish it (test.py and utils.baselines resume "
                 "where they stopped), or score what it has with --partial"))
        if not scored:
            return None
    print(f"evaluating {len(files)} images of {images_dir} on {device}")

    failed = []
    if args.protocol == "verification":
        pairs, nets = verification_pairs(args, normal_dir), (*face_nets(args, device), device)
        results, roc_curves[args.method_name] = comparison.evaluate_verification(
            args, files, images_dir, normal_dir, pairs, nets, shared(("gallery", args.dataset_name), dict), failed)
    elif args.dataset_name in RECOGNITION_SETS:
        results = evaluate_recognition(args, files, images_dir, normal_dir, device, failed)
    else:
        results = evaluate_iqa(args, files, images_dir, normal_dir, device, failed)
    results.update(images=len(files), failed=len(failed))
    if missing:
        results["set_images"] = len(set_files)
        print(f"{args.method_name} on {args.dataset_name}: scored on {len(files)} of the {len(set_files)} images of "
              "the set (partial)")
    if failed:
        print(f"failed images: {len(failed)} (listed above)")

    line = " ".join([datetime.now().isoformat(timespec="seconds"), f"dataset={args.dataset_name}",
                     f"method={args.method_name}"]
                    + [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()])
    os.makedirs(os.path.dirname(os.path.abspath(args.log_path)), exist_ok=True)
    with open(args.log_path, "a", encoding="utf-8", errors="backslashreplace") as f:
        f.write(line + "\n")
    print(f"appended to {args.log_path}: {line}")
    return results


def table_columns(args, dataset):
    """([(dataset, metric)] of the comparison table, {(dataset, metric): why its cells are blank})."""
    if dataset in RECOGNITION_SETS:
        keys = (["accuracy", "accuracy_std", "auc", "tar_at_far_0.01", "tar_at_far_0.001"]
                if args.protocol == "verification" else ["top1", "no_face"])
        return [(dataset, k) for k in keys], {}
    keys = ["psnr", "ssim", "unique"] + ["lpips"] * args.lpips + ["fid"] * args.fid
    notes = {}
    if not os.path.isdir(os.path.join(dataset_dir(args, dataset), "normal")):
        notes.update({(dataset, k): f"{dataset} has no normal/ images to compare with" for k in keys if k != "unique"})
    if not os.path.isfile(args.unique_checkpoint):
        notes[(dataset, "unique")] = f"UNIQUE: {args.unique_checkpoint} not found; {UNIQUE_FIX}"
    return [(dataset, k) for k in keys], notes


def write_figures(args, dataset, methods, rows, roc_curves, device):
    """The set's ROC curves (verification) and comparison grid (--figure) as PNGs in --compare_path."""
    if roc_curves:
        path = os.path.join(args.compare_path, f"roc_{dataset}.png")
        write_image(roc_figure(roc_curves, f"{dataset}, gallery: {args.gallery}"), path)
        print(f"ROC curves: {path}")
    if rows:
        detector = None
        if os.path.isfile(args.retinaface_checkpoint):
            detector = face_detector(args, device)
        else:
            print(f"faces not enlarged in the figure: {args.retinaface_checkpoint} not found; `python -m "
                  "utils.download` fetches it (for a trial: --retinaface_checkpoint "
                  "tests/weights/Retinaface_mobilenet0.25.pth)")
        with torch.no_grad():
            grid, notes = comparison.comparison_figure(dataset_dir(args, dataset), methods, rows, detector)
        for note in notes:
            print(note)
        path = os.path.join(args.compare_path, f"figure_{dataset}.png")
        write_image(grid, path)
        print(f"figure: {path}")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    escape_unprintable_names()
    device = start_device(args.device, args.precision)
    args.batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    keep_freed_memory()
    _shared.clear()
    scores, columns, notes, status = {}, [], {}, 0
    for dataset in args.dataset_name:
        methods = methods_of(args, dataset)
        rows = []
        if args.figure:
            files = (set_images(args, dataset)[1]
                     or list_images(method_folder(dataset_dir(args, dataset), methods[0]))[0])
            try:
                rows = comparison.figure_rows(files, args.figure_images)
            except ValueError as e:
                sys.exit(f"error: {e} ({dataset})")
        dataset_cols, dataset_notes = table_columns(args, dataset)
        columns += dataset_cols
        notes.update(dataset_notes)
        roc_curves = {}
        for method in methods:
            run = argparse.Namespace(**{**vars(args), "dataset_name": dataset, "method_name": method,
                                        "every": args.method_name == ["all"]})
            results = score_method(run, device, roc_curves)
            status |= results is None or bool(results["failed"]) or ("set_images" in results and not args.partial)
            if results is not None:
                scores.setdefault(method, {})[dataset] = results
        for far in FARS:  # verification: a FAR the set's pairs cannot resolve leaves its cells blank
            short = [r[dataset] for r in scores.values() if r.get(dataset, {}).get(f"tar_at_far_{far:g}", 0) is None]
            if short:
                notes[(dataset, f"tar_at_far_{far:g}")] = (f"{dataset}: {short[0]['mismatched']} mismatched pairs "
                                                          f"cannot resolve a FAR of {far:g} ({round(1 / far)} needed)")
        write_figures(args, dataset, methods, rows, roc_curves, device)

    if writes_comparison(args) and scores:
        order = sorted(scores, key=lambda m: (m != INPUT, m.lower()))
        command = "python eval.py " + " ".join(sys.argv[1:] if argv is None else argv)
        paths = write_comparison(args.compare_path, {m: scores[m] for m in order}, columns, notes, command)
        with open(paths[0], encoding="utf-8") as f:
            print(f.read().rstrip())
        print(f"comparison written: {', '.join(paths)}")
    if not any(key in METRICS for r in scores.values() for result in r.values() for key in result):
        print("error: nothing was measured (see the lines above)", file=sys.stderr)
        return 1
    return int(status)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the lines of the methods already scored are in the log", file=sys.stderr)
        sys.exit(130)
