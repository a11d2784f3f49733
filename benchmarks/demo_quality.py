"""Does a set of enhancement weights measurably help? PSNR/SSIM against the normal-light images, colour shift and
face counts, next to the dark input itself and CLAHE, on three sets; prints a table and writes it as JSON.

    python benchmarks/demo_quality.py --enhance_checkpoint checkpoint/Low-FaceNet.pth checkpoint/LLE/epoch99.pth

Sets: dataset/samples (underexposed/ vs normal/), and the face photos of --faces (default: utils.face_photos'
synthetic photos, made in a temporary folder) darkened by utils.lowlight: gamma 2.2 with the published noise, and gamma 2.2 times 0.25
plus noise (seeded). Figures per set, averaged over its images:
  PSNR, SSIM  utils.metrics, against normal
  da*, db*    |mean CIELAB a*| and |mean b*| of (output - normal): the mean colour shift
  faces       RetinaFace detections (the published detector, confidence 0.5) summed over the set
The bar for demo weights: PSNR and SSIM above CLAHE's and PSNR at least 3 dB above the dark input's, colour shifts
under 5, and at least as many faces as in the dark input.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.checks import ArgumentParser, check_checkpoints, check_paths, device_name, integer  # noqa: E402

TEST_RETINAFACE = ROOT / "tests" / "weights" / "Retinaface_mobilenet0.25.pth"  # the published detector


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--enhance_checkpoint", nargs="+", default=["checkpoint/Low-FaceNet.pth"],
                   help="one or more enhancement weight files to compare")
    p.add_argument("--samples", default="dataset/samples", help="a folder of underexposed/ and normal/ pairs")
    p.add_argument("--faces", default=None, help="face photos (NAME/NAME_NNNN.jpg); default: synthetic ones")
    p.add_argument("--retinaface_checkpoint", default="checkpoint/Retinaface_mobilenet0.25.pth",
                   help="the published detector (falls back to the copy the tests carry)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--json", default="benchmarks/demo_quality.json", help="where the table goes (JSON)")
    p.add_argument("--seed", type=integer(0), default=1, help="seeds the darkening of the face photos")
    return p.parse_args(argv)


def check_args(args):
    """Exit with one line, before torch is imported, when a folder or checkpoint is missing."""
    check_paths(reads=[("--samples", os.path.join(args.samples, sub)) for sub in ("underexposed", "normal")]
                + ([("--faces", args.faces)] if args.faces else []), logs=[("--json", args.json)])
    check_checkpoints([("--enhance_checkpoint", path, "Low-FaceNet.pth") for path in args.enhance_checkpoint])


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch

import numpy as np  # noqa: E402
from skimage.color import rgb2lab  # noqa: E402
from skimage.exposure import equalize_adapthist  # noqa: E402

import nets  # noqa: E402
from nets.enhance import enhance  # noqa: E402
from nets.retinaface import load_retinaface  # noqa: E402
from utils.face_photos import make_face_photos  # noqa: E402
from utils.images import list_images, read_image, to_tensor, to_uint8  # noqa: E402
from utils.lowlight import darken, image_rng  # noqa: E402
from utils.metrics import psnr, ssim  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402


def image_sets(args, faces):
    """{set name: [(dark uint8, normal uint8)]}, the face sets from the photos under `faces`."""
    low, normal = os.path.join(args.samples, "underexposed"), os.path.join(args.samples, "normal")
    sets = {"samples": [(read_image(os.path.join(low, rel)), read_image(os.path.join(normal, rel)))
                        for rel in list_images(low)[0]]}
    photos = sorted(str(p.relative_to(faces)) for p in Path(faces).rglob("*.jpg"))
    for name, cut in (("faces gamma 2.2", 1.0), ("faces gamma 2.2 x 0.25", 0.25)):
        pairs = []
        for rel in photos:
            image = read_image(os.path.join(faces, rel))
            dark = darken(image, image_rng(args.seed, rel), "gamma", gamma=2.2, noise_std=0.28)
            pairs.append(((dark * cut).astype(np.uint8) if cut != 1 else dark, image))
        sets[name] = pairs
    return sets


def clahe(image):
    return (equalize_adapthist(image) * 255).round().astype(np.uint8)


def measure(outputs, pairs, detector):
    """Mean figures of `outputs` against the normal images of `pairs`."""
    fig = {"psnr": [], "ssim": [], "da": [], "db": []}
    for out, (_, normal) in zip(outputs, pairs):
        o, n = to_tensor(out)[None], to_tensor(normal)[None]
        fig["psnr"].append(float(psnr(o, n)))
        fig["ssim"].append(float(ssim(o, n)))
        shift = (rgb2lab(out) - rgb2lab(normal)).reshape(-1, 3).mean(0)
        fig["da"].append(abs(float(shift[1])))
        fig["db"].append(abs(float(shift[2])))
    result = {k: float(np.mean(v)) for k, v in fig.items()}
    result["faces"] = sum(len(d) for d in detector.detect(outputs))
    return result


def meets_bar(f, figures):
    """The demo weights' bar (see the docstring) for figures f of one method on one set."""
    dark, clahe_ = figures["dark input"], figures["CLAHE"]
    return (f["psnr"] >= dark["psnr"] + 3 and f["psnr"] > clahe_["psnr"] and f["ssim"] > clahe_["ssim"]
            and f["ssim"] > dark["ssim"] and f["da"] < 5 and f["db"] < 5 and f["faces"] >= dark["faces"])


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    retinaface = args.retinaface_checkpoint
    if not os.path.isfile(retinaface):
        retinaface = str(TEST_RETINAFACE)
    detector = load_retinaface(retinaface, device)
    models = {path: nets.load("enhance", path, device) for path in args.enhance_checkpoint}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sets = image_sets(args, args.faces or make_face_photos(tmp))
    for set_name, pairs in sets.items():
        methods = {"dark input": [d for d, _ in pairs], "CLAHE": [clahe(d) for d, _ in pairs]}
        for path, model in models.items():
            methods[os.path.basename(path)] = [to_uint8(enhance(model, to_tensor(d)[None].to(device), tile=1024)[0])
                                               for d, _ in pairs]
        figures = {m: measure(outputs, pairs, detector) for m, outputs in methods.items()}
        for path in models:
            figures[os.path.basename(path)]["meets_bar"] = meets_bar(figures[os.path.basename(path)], figures)
        results[set_name] = {"images": len(pairs), **figures}

    print(f"{'set (images)':34}{'method':26}{'PSNR':>8}{'SSIM':>8}{'da*':>7}{'db*':>7}{'faces':>7}  bar")
    for set_name, r in results.items():
        for method, f in r.items():
            if method != "images":
                bar = {True: "met", False: "NOT met", None: ""}[f.get("meets_bar")]
                print(f"{set_name + ' (' + str(r['images']) + ')':34}{method:26}{f['psnr']:8.2f}{f['ssim']:8.3f}"
                      f"{f['da']:7.2f}{f['db']:7.2f}{f['faces']:7d}  {bar}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
