"""Make the training data and stand-in weights of the demo-weights trial from what the dependencies ship (no
download). The trial did not give weights that help (README, "Demo weights"); this makes it reproducible:

    python dataset/make_demo_data.py
    python train.py --dataset_name Demo-Astronaut --contrast_positive_path dataset/Demo-Contrast/high \
        --contrast_negative_path dataset/Demo-Contrast/low --crop_size 128 --batch_size 2 --epoch_num 2 \
        --vgg_checkpoint checkpoint/demo_vgg16_luminance.pth --facenet_checkpoint checkpoint/demo_facenet_random.pth \
        --retinaface_checkpoint tests/weights/Retinaface_mobilenet0.25.pth \
        --checkpoint_root checkpoint/demo/ --log_path log/demo/train.txt --num_workers 1 --log_every 20
    python benchmarks/demo_quality.py --enhance_checkpoint checkpoint/demo/epoch0.pth checkpoint/demo/epoch1.pth

Writes, seeded and bit-reproducible (existing files are kept):
  dataset/Demo-Astronaut/{normal,underexposed,seg}/astronaut/astronaut_NNNN.png
      random crops (scale, position, flip) of scikit-image's public-domain astronaut photo, resized to 128x128,
      darkened by utils.lowlight (published gamma and scale ranges, and gamma times a further exposure cut);
      image 0000 is the whole photo (the face database's image). No face parser is at hand: every label map
      is background (class 0).
  dataset/Demo-Contrast/{high,low}/  unpaired normal-light and darkened crops of the astronaut, chelsea,
      coffee and rocket photos (the contrastive positives and negatives).
  checkpoint/demo_vgg16_luminance.pth  stand-in for ImageNet VGG16: torchvision's random initialisation
      (seeded), its first convolution averaged over the three colour channels, so it sees luminance only.
  checkpoint/demo_facenet_random.pth   stand-in for the FaceNet weights: random (seeded). With one identity
      the face loss is log(1) = 0, so these weights do not change training.
"""
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from utils.checks import ArgumentParser, integer  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--images", type=integer(1), default=200, help="training images")
    p.add_argument("--contrast", type=integer(1), default=100, help="positives and negatives each")
    p.add_argument("--seed", type=integer(0), default=1, help="seeds the crops, the darkening and the stand-in weights")
    return p.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the imports below load torch

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

from nets.facenet import FaceNet  # noqa: E402
from nets.vgg import vgg16_trunk  # noqa: E402
from utils.checkpoint import atomic_save  # noqa: E402
from utils.images import write_image  # noqa: E402
from utils.lowlight import darken  # noqa: E402

SIZE = 128


def random_crop(image, rng, min_side):
    h, w = image.shape[:2]
    side = int(rng.integers(min_side, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(image[y:y + side, x:x + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return crop[:, ::-1].copy() if rng.random() < 0.5 else crop


def random_darken(image, rng):
    """One of: published gamma (2.15-2.25) + noise, published scale (0.35-0.45), gamma then x0.25-0.6."""
    kind = rng.integers(3)
    if kind == 0:
        return darken(image, rng, "gamma")
    if kind == 1:
        return darken(image, rng, "scale")
    return (darken(image, rng, "gamma") * rng.uniform(0.25, 0.6)).astype(np.uint8)


def write_new(pixels, path):
    if not os.path.exists(path):
        write_image(pixels, path)


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train = os.path.join(ROOT, "dataset", "Demo-Astronaut")
    astronaut = data.astronaut()
    for k in range(args.images):
        normal = cv2.resize(astronaut, (SIZE, SIZE), interpolation=cv2.INTER_AREA) if k == 0 else \
            random_crop(astronaut, rng, 160)
        name = os.path.join("astronaut", f"astronaut_{k:04d}.png")
        write_new(normal, os.path.join(train, "normal", name))
        write_new(random_darken(normal, rng), os.path.join(train, "underexposed", name))
        write_new(np.zeros((SIZE, SIZE), np.uint8), os.path.join(train, "seg", name))
    scenes = {"astronaut": astronaut, "chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
    contrast = os.path.join(ROOT, "dataset", "Demo-Contrast")
    for k in range(args.contrast):
        name = list(scenes)[k % len(scenes)]
        write_new(random_crop(scenes[name], rng, 128), os.path.join(contrast, "high", f"{name}_{k:04d}.png"))
        write_new(random_darken(random_crop(scenes[name], rng, 128), rng),
                  os.path.join(contrast, "low", f"{name}_{k:04d}.png"))

    torch.manual_seed(args.seed)
    vgg = vgg16_trunk().state_dict()
    vgg["features.0.weight"] = vgg["features.0.weight"].mean(1, keepdim=True).expand(-1, 3, -1, -1).clone()
    atomic_save(vgg, os.path.join(ROOT, "checkpoint", "demo_vgg16_luminance.pth"))
    atomic_save(FaceNet().state_dict(), os.path.join(ROOT, "checkpoint", "demo_facenet_random.pth"))
    print(f"wrote {train}, {contrast} and the stand-in weights in checkpoint/")


if __name__ == "__main__":
    main()
