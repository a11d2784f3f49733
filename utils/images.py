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


def list_images(root, say=None):
    """(images, passed_over) below root, flat or in sub-folders: the relative paths of the image files, sorted as
    os.walk visits them (a folder's files, then its sub-folders), and (relative path, reason) for every other entry:
    hidden files and folders, files that are not images, special files (FIFOs, devices), folders that cannot be
    listed and links back to a folder above them. Links to files and to other folders are followed; names need not
    be valid UTF-8. say: called with one line per entry passed over ('skipped PATH: reason'), e.g. print."""
    images, passed_over = [], []

    def walk(rel, above):
        try:
            with os.scandir(os.path.join(root, rel)) as it:
                entries = sorted(it, key=lambda entry: entry.name)
        except OSError as e:
            passed_over.append((rel, f"cannot list the folder ({e.strerror or e})"))
            return
        folders = []
        for entry in entries:
            path = os.path.join(rel, entry.name)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
                special = not (is_dir or is_file) and os.path.exists(entry.path)  # a FIFO, socket or device
            except OSError as e:
                passed_over.append((path, f"cannot be examined ({e.strerror or e})"))
                continue
            if entry.name.startswith("."):
                passed_over.append((path, "hidden folder" if is_dir else "hidden file"))
            elif is_dir:
                folders.append(path)
            elif special:
                passed_over.append((path, "not a regular file"))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(path)  # a broken link too: reading it then fails with a line
            else:
                passed_over.append((path, "not an image file"))
        for path in folders:
            real = os.path.realpath(os.path.join(root, path))
            if real in above:
                passed_over.append((path, "a link to a folder above it (not followed: it would loop)"))
            else:
                walk(path, above | {real})

    walk("", {os.path.realpath(root)})
    for rel, reason in passed_over if say else ():
        say(f"skipped {os.path.join(root, rel)}: {reason}")
    return images, passed_over


def _largest_value(im):
    """The largest value a one-channel image of mode I, I;16* or F holds at its file's declared depth: 65535 for
    16-bit modes and for PNM/PNG files of more than 8 bits (Pillow scales their maxval to 65535), 2**bits - 1 for
    TIFF files (BitsPerSample), 255 for float images (the scale Pillow's own conversions use)."""
    if im.mode == "F":
        return 255
    bits = getattr(im, "tag_v2", {}).get(258, 16) if im.mode == "I" else 16
    return 2 ** (bits[0] if isinstance(bits, tuple) else bits) - 1


def read_image(path):
    """HxWx3 uint8 RGB array of any image Pillow opens: EXIF rotation applied, alpha/palette/CMYK/grey converted, and
    deep images (modes I, I;16*, F) scaled to 0..255 by their declared depth (_largest_value), not by their data.
    An undecodable file, or pixel values that no image holds (NaN, outside 0..largest value), raise ImageReadError."""
    try:
        with Image.open(path) as im:
            deep = im.mode in ("I", "F") or im.mode.startswith("I;16")
            top = _largest_value(im) if deep else 255  # before exif_transpose, which drops the file's tags
            im = ImageOps.exif_transpose(im)
            im.load()
            if not deep:
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            arr = np.asarray(im, dtype=np.float64)
    except Exception as e:  # decoders of malformed files raise OSError, SyntaxError, EOFError, struct.error, ...
        reason = "empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else str(e) or type(e).__name__
        raise ImageReadError(f"{path}: cannot read image ({reason})") from None
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > top:
        raise ImageReadError(f"{path}: pixel values outside 0..{top} (the range of its {im.mode} image mode) or not "
                             f"finite: {np.nanmin(arr):g}..{np.nanmax(arr):g}")
    arr = np.rint(arr * (255 / top)).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=2)


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


def write_image(array, path, fsync=True):
    """Write an HxWx3 uint8 array with PIL (format from the extension, PIL's defaults as save_image), atomically:
    a killed run never leaves a half-written image under an image name (fsync: see atomic_write)."""
    fmt = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format=fmt), fsync)


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
