"""Image files: finding them in a folder tree, reading any common format as RGB, writing as save_image does."""
import os

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from utils.checkpoint import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""


def list_images(root):
    """(images, others): relative paths of image files below root (flat or sub-folders), sorted, and of
    the other files (hidden files, .txt, Thumbs.db, ...) that were passed over."""
    images, others = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), root)
            is_image = name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
            (images if is_image else others).append(rel)
    return images, others


def read_image(path):
    """HxWx3 uint8 RGB array of any readable image: EXIF rotation applied, 16-bit scaled, alpha/palette/CMYK/grey converted."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 257.0 if arr.max() > 255 or im.mode.startswith("I;16") else 1.0
                arr = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as e:  # decoders of malformed files raise OSError, SyntaxError, EOFError, struct.error, ...
        reason = "empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else str(e) or type(e).__name__
        raise ImageReadError(f"{path}: cannot read image ({reason})") from None


def to_tensor(image):
    """HxWx3 uint8 array -> 3xHxW float tensor in [0,1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255)


def uint8_images(tensor):
    """...x3xHxW tensor -> ...xHxWx3 uint8 tensor on the same device, rounded exactly as torchvision's save_image:
    floor(clamp(x*255+0.5, 0, 255)). A whole batch converts where it was computed and goes to the host in one copy."""
    return tensor.detach().mul(255).add_(0.5).clamp_(0, 255).movedim(-3, -1).to(torch.uint8)


def to_uint8(tensor):
    """3xHxW tensor -> HxWx3 uint8 array, as save_image writes it (see uint8_images)."""
    return uint8_images(tensor).cpu().numpy()


def write_image(array, path):
    """Write an HxWx3 uint8 array with PIL (format from the extension, PIL's defaults as save_image), atomically:
    a killed run never leaves a half-written image under an image name."""
    fmt = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format=fmt))


def side_by_side(images, gap=4):
    """HxWx3 uint8 images side by side on white, each scaled to the first one's height."""
    h = images[0].shape[0]
    panels = [im if im.shape[0] == h else cv2.resize(im, (max(1, round(im.shape[1] * h / im.shape[0])), h),
                                                      interpolation=cv2.INTER_AREA) for im in images]
    canvas = np.full((h, sum(p.shape[1] for p in panels) + gap * (len(panels) - 1), 3), 255, np.uint8)
    x = 0
    for p in panels:
        canvas[:, x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return canvas
