"""Face photos made from scikit-image's public-domain photos, for the tests, the benchmarks and trials of a set-up
(no LFW photo is redistributed).

    python -m utils.face_photos results/face_photos        # DEST: any folder

`make_face_photos(dest)` writes dest/NAME/NAME_000K.jpg (LFW layout, 250x250 JPEG): a few "identities", each a
fixed change of a real face (the astronaut, the cameraman: mirrored, recoloured, narrowed), and a few photos of
each (crop, scale and light changes). The published RetinaFace finds one face in every photo.
"""
from pathlib import Path

from utils.checks import ArgumentParser, check_paths


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("dest", metavar="DEST", help="the folder to write NAME/NAME_000K.jpg in (files there are replaced)")
    return p.parse_args(argv)


if __name__ == "__main__":
    check_paths(writes=[("DEST", parse_args().dest)])  # --help and argument errors answer here, before cv2 loads

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

SIZE = 250


def _astronaut():
    return data.astronaut()[20:220, 125:325]  # the face (box about x 177-273, y 59-178 of 512x512), with margin


def _cameraman():
    return np.repeat(data.camera()[40:200, 150:310, None], 3, axis=2)


IDENTITIES = {  # name -> a face picture (HxWx3 uint8, the face about in its middle)
    "Astro_Natural": lambda: _astronaut(),
    "Astro_Mirror": lambda: _astronaut()[:, ::-1],
    "Astro_Recoloured": lambda: _astronaut()[:, :, ::-1],
    "Astro_Narrow": lambda: cv2.resize(_astronaut(), (160, 200), interpolation=cv2.INTER_AREA),
    "Camera_Man": lambda: _cameraman(),
}

PHOTOS = (  # (zoom, shift x, shift y, light) of each photo of an identity
    (1.00, 0, 0, 1.0),
    (0.90, 12, -8, 0.8),
    (1.10, -10, 6, 1.15),
)


def photo(face, zoom, dx, dy, light):
    """A 250x250 picture of `face`: scaled by `zoom`, centred at (dx, dy) off the middle on a grey-brown
    background, brightness times `light`."""
    h, w = face.shape[:2]
    scale = zoom * SIZE * 0.8 / max(h, w)
    face = cv2.resize(np.ascontiguousarray(face), (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.empty((SIZE, SIZE, 3), np.uint8)
    canvas[:] = (96, 84, 72)
    top, left = (SIZE - face.shape[0]) // 2 + dy, (SIZE - face.shape[1]) // 2 + dx
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + face.shape[0], SIZE), min(left + face.shape[1], SIZE)
    canvas[y0:y1, x0:x1] = face[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.clip(canvas.astype(np.float32) * light, 0, 255).round().astype(np.uint8)


def make_face_photos(dest):
    """Write every identity's photos under dest (LFW layout); returns dest."""
    dest = Path(dest)
    for name, make in IDENTITIES.items():
        (dest / name).mkdir(parents=True, exist_ok=True)
        face = make()
        for k, settings in enumerate(PHOTOS, start=1):
            Image.fromarray(photo(face, *settings)).save(dest / name / f"{name}_{k:04d}.jpg", quality=95)
    return dest


if __name__ == "__main__":
    dest = parse_args().dest
    print(f"wrote {sum(1 for _ in make_face_photos(dest).rglob('*.jpg'))} face photos into {dest}")
