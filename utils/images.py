"""Image files: finding them in a folder tree, reading any common format as RGB, writing as save_image does."""
import os

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from utils.checkpoint import atomic_write
from utils.output_record import RECORD_NAME

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""


def list_images(root, say=None):
    """(images, passed_over) below root, flat or in sub-folders: the relative paths of the image files, sorted as
    os.walk visits them (a folder's files, then its sub-folders), and (relative path, reason) for every other entry:
    hidden files and folders, files that are not images, special files (FIFOs, devices), folders that cannot be
    listed and links back to a folder above them. Links to files and to other folders are followed; names need not
    be valid UTF-8. The record of what made a folder (utils.output_record.RECORD_NAME) is left out without a line.
    say: called with one line per entry passed over ('skipped PATH: reason'), e.g. print."""
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
            if entry.name == RECORD_NAME:
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


PILLOW_PIXEL_LIMIT = 2 * Image.MAX_IMAGE_PIXELS  # Pillow's own refusal (DecompressionBombError), about 179 Mpx
Image.MAX_IMAGE_PIXELS = None  # read_image checks the size itself, against the limit each caller gives it
FLOAT_UNSURE_BELOW = 2  # a float image whose values pass 1 but stay below this may be 0..1 with an overshoot
BAND_PIXELS = 1 << 20  # read_image copies large images into their array in bands of rows of about this size


class ImageTooLarge(ImageReadError):
    """An image with more pixels than the reader allows; `pixels` and `size` (width, height) say how large."""

    def __init__(self, message, size):
        super().__init__(message)
        self.size, self.pixels = size, size[0] * size[1]


def _largest_value(im):
    """The largest value a one-channel image of mode I or I;16* holds at its file's declared depth: 65535 for
    16-bit modes and for PNM/PNG files of more than 8 bits (Pillow scales their maxval to 65535), 2**bits - 1 for
    TIFF files (BitsPerSample)."""
    bits = getattr(im, "tag_v2", {}).get(258, 16) if im.mode == "I" else 16
    return 2 ** (bits[0] if isinstance(bits, tuple) else bits) - 1


def _float_scale(path, arr, say):
    """The value that stands for white in a float (mode F) image: 1 when its values lie in 0..1, else 255 (Pillow's
    own scale), with a line through `say` when the values pass 1 by little (below FLOAT_UNSURE_BELOW): then
    either a 0..1 image overshoots or a 0..255 image is nearly black, and the rule reads the latter."""
    largest = float(arr.max()) if arr.size else 0.0
    if largest <= 1:
        return 1
    if largest < FLOAT_UNSURE_BELOW and say:
        say(f"note {path}: float pixel values up to {largest:g}, just above 1: read as 0..255 (nearly black); "
            "a 0..1 image must lie within 0..1 to be read as one (clip it)")
    return 255


def _band_copy(im, alpha=False):
    """(HxWx3 uint8 RGB array, HxW uint8 alpha array or None) of a PIL image, converted (to RGBA with alpha) and
    copied in bands of BAND_PIXELS: beside the image and the arrays, a large image needs a band's worth of memory
    (a whole-image conversion would take 4 + 3 + 3 more bytes per pixel)."""
    rgb = np.empty((im.height, im.width, 3), np.uint8)
    opacity = np.empty((im.height, im.width), np.uint8) if alpha else None
    rows = max(1, BAND_PIXELS // max(1, im.width))
    for y in range(0, im.height, rows):
        band = im if rows >= im.height else im.crop((0, y, im.width, min(y + rows, im.height)))
        pixels = np.asarray(band.convert("RGBA" if alpha else "RGB"))
        rgb[y:y + band.height] = pixels[..., :3]
        if alpha:
            opacity[y:y + band.height] = pixels[..., 3]
    return rgb, opacity


def read_image(path, max_pixels=PILLOW_PIXEL_LIMIT, with_alpha=False, say=print):
    """HxWx3 uint8 RGB array of any image Pillow opens: EXIF rotation applied, alpha/palette/CMYK/grey converted.
    Deep images are scaled to 0..255: modes I and I;16* by their declared depth (_largest_value), not by their
    data; float images (mode F) from 0..1 when their values lie in 0..1, else from 0..255 (_float_scale, which says
    when that is unsure). with_alpha: returns (RGB array, HxW alpha array or None when the image has none).
    An undecodable file, an image of more than max_pixels pixels (ImageTooLarge, checked before decoding; the
    default is Pillow's own guard against decompression bombs), or pixel values that no image holds (NaN,
    outside 0..the largest value) raise ImageReadError."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageTooLarge(f"{path}: {im.width}x{im.height} image, more than the {max_pixels} pixels "
                                    "allowed (a guard against decompression bombs)", im.size)
            deep = im.mode in ("I", "F") or im.mode.startswith("I;16")
            top = 255 if im.mode == "F" else _largest_value(im) if deep else 255  # before the rotation drops tags
            ImageOps.exif_transpose(im, in_place=True)  # loads the image; in place: no copy when it is upright
            if not deep:
                rgb, alpha = _band_copy(im, with_alpha and im.has_transparency_data)
                return (rgb, alpha) if with_alpha else rgb
            arr = np.asarray(im, dtype=np.float64)
    except ImageReadError:
        raise
    except Exception as e:  # decoders of malformed files raise OSError, SyntaxError, EOFError, struct.error, ...
        reason = "empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else str(e) or type(e).__name__
        raise ImageReadError(f"{path}: cannot read image ({reason})") from None
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > top:
        raise ImageReadError(f"{path}: pixel values outside 0..{top} (the range of its {im.mode} image mode) or not "
                             f"finite: {np.nanmin(arr):g}..{np.nanmax(arr):g}")
    if im.mode == "F":
        top = _float_scale(path, arr, say)
    arr = np.repeat(np.rint(arr * (255 / top)).astype(np.uint8)[..., None], 3, axis=2)
    return (arr, None) if with_alpha else arr


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


def write_image(array, path, temporary=".tmp-", fsync=True):
    """Write an HxWx3 (or HxWx4: RGBA) uint8 array with PIL (format from the extension, PIL's defaults as save_image),
    atomically, through a temporary file whose name starts with `temporary`: a killed run never leaves a
    half-written image under an image name (fsync: see atomic_write)."""
    fmt = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format=fmt), prefix=temporary, fsync=fsync)


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
