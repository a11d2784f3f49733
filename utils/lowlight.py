"""Low-light synthesis used for the published test sets: a gamma curve plus faint Gaussian noise, or plain scaling.

    python -m utils.lowlight --normal_path dataset/CASIA-Test/normal \
                             --underexposed_path dataset/CASIA-Test/underexposed --mode gamma --seed 1

The output folder mirrors the input (names, extensions and sub-folders kept); it must lie apart from the input
folder (not the same, not inside it, not containing it). Each image gets its own random stream, seeded by --seed
and its relative path, so a resumed or partial run gives the same pixels. Existing outputs are kept unless
--overwrite. The output folder records what made it (.made_by.json: the input folder, --mode, --seed and the fixed
values); a run with other settings into it stops with one line naming --overwrite, which replaces the outputs it
writes. An input's transparency (alpha) is kept in its output. Entries that are not images are passed over with a
line each. Exit status 1 when an image could not be read or written, or the folder holds no image.
"""
import hashlib
import os
import sys

import numpy as np

from utils.checks import ArgumentParser, check_paths, escape_unprintable_names, integer, number

GAMMA_RANGE = (2.15, 2.25)
NOISE_STD_RANGE = (0.26, 0.30)  # 0..255 units
SCALE_RANGE = (0.35, 0.45)


def darken(image, rng, mode="gamma", gamma=None, noise_std=None, scale=None):
    """HxWx3 uint8 -> darkened HxWx3 uint8. Values left as None are drawn uniformly from the published ranges.

    gamma: ((x / 255) ** gamma * 255) truncated to uint8, then Gaussian noise (0..255 units) cast to uint8 as
    numpy's astype does (truncation toward zero, negatives wrap: -1.3 -> 255) and added with saturation (cv2.add).
    scale: (x * scale) truncated to uint8.
    """
    x = image.astype(np.float64)
    if mode == "gamma":
        gamma = rng.uniform(*GAMMA_RANGE) if gamma is None else gamma
        noise_std = rng.uniform(*NOISE_STD_RANGE) if noise_std is None else noise_std
        dark = (np.power(x / 255, gamma) * 255).astype(np.uint8)
        noise = (np.trunc(rng.normal(0, noise_std, image.shape)).astype(np.int64) % 256).astype(np.uint8)
        return np.minimum(dark.astype(np.int16) + noise, 255).astype(np.uint8)
    if mode == "scale":
        scale = rng.uniform(*SCALE_RANGE) if scale is None else scale
        return (x * scale).astype(np.uint8)
    raise ValueError(f"unknown low-light mode {mode!r}; use 'gamma' or 'scale'")


def image_rng(seed, rel_path):
    """A random stream of its own for each image: seeded by the run's seed and the image's relative path."""
    digest = hashlib.sha256(os.fsencode(rel_path.replace(os.sep, "/"))).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--normal_path", required=True, help="folder of normal-light images (flat or sub-folders)")
    p.add_argument("--underexposed_path", required=True, help="output folder, apart from --normal_path")
    p.add_argument("--mode", choices=["gamma", "scale"], default="gamma", help="gamma curve plus faint noise, or "
                   "plain scaling (see --gamma, --noise_std, --scale)")
    p.add_argument("--seed", type=integer(0), default=1, help="with each image's relative path, seeds its random "
                   "stream")
    p.add_argument("--gamma", type=number(0, above=True), help="fixed gamma instead of a draw from [2.15, 2.25]")
    p.add_argument("--noise_std", type=number(0), help="fixed noise std (0..255 units) instead of [0.26, 0.30]")
    p.add_argument("--scale", type=number(0, 1, above=True), help="fixed factor in (0, 1] instead of a draw from "
                   "[0.35, 0.45]")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files, also in a folder "
                   "made with other settings (its record, .made_by.json, says which)")
    return p.parse_args(argv)


def check_args(args):
    """Exit with one line when a setting does not apply to --mode, or the folders cannot work together."""
    unused = [flag for flag, mode in (("gamma", "gamma"), ("noise_std", "gamma"), ("scale", "scale"))
              if getattr(args, flag) is not None and args.mode != mode]
    if unused:
        sys.exit(f"error: --{unused[0]} applies to --mode {'scale' if args.mode == 'gamma' else 'gamma'} only")
    check_paths(reads=[("--normal_path", args.normal_path)], writes=[("--underexposed_path", args.underexposed_path)])


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch and cv2

from utils.images import ImageReadError, list_images, read_image, write_image  # noqa: E402
from utils.output_record import claim_folder, finish_folder  # noqa: E402


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    escape_unprintable_names()
    files, _ = list_images(args.normal_path, say=print)
    if not files:
        sys.exit(f"error: no images found in {args.normal_path}")
    made_by = {"command": "utils.lowlight", "input": os.path.realpath(args.normal_path), "mode": args.mode,
               "seed": args.seed, "gamma": args.gamma, "noise_std": args.noise_std, "scale": args.scale}
    replacing = claim_folder("--underexposed_path", args.underexposed_path, made_by, args.overwrite, set(files))
    written, kept, failed, stale = 0, 0, 0, 0
    for rel in files:
        out = os.path.join(args.underexposed_path, rel)
        if os.path.isfile(out) and not args.overwrite:
            kept += 1
            continue
        try:
            image, alpha = read_image(os.path.join(args.normal_path, rel), with_alpha=True)
            dark = darken(image, image_rng(args.seed, rel), args.mode, args.gamma, args.noise_std, args.scale)
            write_image(dark if alpha is None else np.dstack([dark, alpha]), out)
            written += 1
        except (ImageReadError, OSError) as e:
            print(f"failed {e}" if isinstance(e, ImageReadError) else f"failed {out}: cannot write ({e})")
            failed += 1
            stale += os.path.isfile(out)  # an output of the settings before is still there
    if replacing and not stale:
        finish_folder(args.underexposed_path, made_by)
    print(f"done: {written} written to {args.underexposed_path}, {kept} kept (--overwrite replaces them), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
