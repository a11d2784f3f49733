"""Figures of a comparison, drawn with Pillow: the grid of images (one row per image, one column per method, the face
of each row enlarged beside it) and ROC curves.

    picture = image_grid(rows, ["Input", "lime", "Ours", "normal"], faces)    # HxWx3 uint8
    picture = roc_figure({"Ours": (far, tar), "Input": (far2, tar2)}, "CASIA-Test")
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND, INK = (255, 255, 255), (0, 0, 0)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _font(size):
    return ImageFont.load_default(size=size)


def _fit(image, height):
    """An HxWx3 uint8 array as a PIL image `height` pixels high (aspect kept)."""
    im = Image.fromarray(image)
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)


def face_crop(image, box, reference_shape):
    """The region `box` (x1, y1, x2, y2 in an image of reference_shape) of `image`, scaled to its size and widened
    to a square with a margin of a quarter of the face, clipped at the borders."""
    sy, sx = image.shape[0] / reference_shape[0], image.shape[1] / reference_shape[1]
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    side = 1.5 * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(image.shape[1], round(cx + side / 2)), min(image.shape[0], round(cy + side / 2))
    return image[top:max(bottom, top + 1), left:max(right, left + 1)]


def image_grid(rows, headers, faces=None, height=160, gap=4, row_labels=None):
    """One line per row of images (HxWx3 uint8, one per header), each scaled to `height`; with faces (one box
    (x1, y1, x2, y2) or None per row, in the coordinates of the row's last image), the face region of every column
    enlarged to `height` beside the row. Column headers above (repeated over the faces), a label left of each row."""
    font = _font(max(10, height // 10))
    label_h = font.size + 8
    label_w = max((round(font.getlength(t)) + 8 for t in row_labels), default=0) if row_labels else 0
    lines = []
    for r, images in enumerate(rows):
        panels = [_fit(im, height) for im in images]
        box = faces[r] if faces else None
        if box is not None:
            panels += [_fit(face_crop(im, box, images[-1].shape), height) for im in images]
        lines.append(panels)
    widths = [sum(p.width for p in panels) + gap * (len(panels) - 1) for panels in lines]
    canvas = Image.new("RGB", (label_w + max(widths), label_h + len(lines) * (height + gap)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    first = lines[0]
    x = label_w
    for k, panel in enumerate(first):
        draw.text((x + panel.width / 2, label_h / 2), headers[k % len(headers)], fill=INK, font=font, anchor="mm")
        x += panel.width + gap
    for r, panels in enumerate(lines):
        y = label_h + r * (height + gap)
        if row_labels:
            draw.text((4, y + height / 2), row_labels[r], fill=INK, font=font, anchor="lm")
        x = label_w
        for panel in panels:
            canvas.paste(panel, (x, y))
            x += panel.width + gap
    return np.asarray(canvas)


def roc_figure(curves, title, size=480):
    """ROC curves {name: (FAR array, TAR array)} on linear axes 0..1, a diagonal for chance, a legend."""
    font, small = _font(16), _font(12)
    margin_l, margin_b, margin_t, margin_r = 56, 48, 32, 16
    canvas = Image.new("RGB", (size + margin_l + margin_r, size + margin_t + margin_b), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    to_px = lambda far, tar: (margin_l + far * size, margin_t + (1 - tar) * size)
    draw.rectangle([to_px(0, 1), to_px(1, 0)], outline=INK)
    draw.line([to_px(0, 0), to_px(1, 1)], fill=(200, 200, 200))
    for tick in np.linspace(0, 1, 6):
        x, y0 = to_px(tick, 0)
        draw.line([(x, y0), (x, y0 + 4)], fill=INK)
        draw.text((x, y0 + 6), f"{tick:.1f}", fill=INK, font=small, anchor="mt")
        x0, y = to_px(0, tick)
        draw.line([(x0 - 4, y), (x0, y)], fill=INK)
        draw.text((x0 - 6, y), f"{tick:.1f}", fill=INK, font=small, anchor="rm")
    draw.text((margin_l + size / 2, size + margin_t + margin_b - 4), "false accept rate", fill=INK, font=small,
              anchor="md")
    draw.text((margin_l + size / 2, margin_t / 2), title, fill=INK, font=font, anchor="mm")
    draw.text((4, margin_t - 4), "TAR", fill=INK, font=small, anchor="ld")
    for k, (name, (far, tar)) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        draw.line([to_px(f, t) for f, t in zip(far, tar)], fill=colour, width=2)
        x, y = to_px(0.55, 0.05 + 0.06 * (len(curves) - 1 - k))
        draw.line([(x, y), (x + 20, y)], fill=colour, width=3)
        draw.text((x + 26, y), name, fill=INK, font=small, anchor="lm")
    return np.asarray(canvas)
