"""Make dataset/samples/ (normal/ and underexposed/) from scikit-image's public-domain astronaut photo.

    python dataset/samples/make_samples.py

Crops, flips and several darkening levels of the project's own synthesis (utils.lowlight), seeded, so the
files can be rebuilt bit for bit. Existing files are kept unless --overwrite.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from utils.checks import ArgumentParser  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    return p.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the imports below load cv2 and scikit-image

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

from utils.images import write_image  # noqa: E402
from utils.lowlight import darken  # noqa: E402

# name: (crop rows, crop cols, output size (w, h), horizontal flip, darkening)
SAMPLES = {
    "astronaut_0001.png": ((0, 512), (0, 512), (256, 256), False, dict(mode="gamma", gamma=2.2, noise_std=0.28)),
    "astronaut_0002.png": ((20, 276), (110, 366), (256, 256), True, dict(mode="gamma", gamma=2.2, noise_std=0.28)),
    "astronaut_0003.png": ((0, 400), (60, 360), (240, 320), False, dict(mode="scale", scale=0.4)),
    "astronaut_0004.png": ((0, 384), (64, 448), (256, 256), True, dict(mode="gamma", gamma=2.2, noise_std=0.28, scale=0.25)),
    "astronaut_0005.png": ((40, 296), (120, 376), (192, 192), False, dict(mode="gamma", gamma=2.5, noise_std=0.28)),
}


def main(argv=None):
    args = parse_args(argv)
    root = os.path.dirname(os.path.abspath(__file__))
    rng = np.random.default_rng(1)
    for name, ((r0, r1), (c0, c1), size, flip, how) in SAMPLES.items():
        image = cv2.resize(data.astronaut()[r0:r1, c0:c1], size, interpolation=cv2.INTER_AREA)
        image = image[:, ::-1].copy() if flip else image
        how = dict(how)
        scale = how.pop("scale", None) if how["mode"] == "gamma" else None
        dark = darken(image, rng, **how)
        if scale is not None:  # gamma, then a further exposure cut: the hardest level
            dark = (dark * scale).astype(np.uint8)
        for folder, pixels in (("normal", image), ("underexposed", dark)):
            path = os.path.join(root, folder, name)
            if args.overwrite or not os.path.exists(path):
                write_image(pixels, path)
    print(f"wrote {len(SAMPLES)} sample pairs to {root}/normal and {root}/underexposed")


if __name__ == "__main__":
    main()
