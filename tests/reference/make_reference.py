"""Regenerate tests/reference/parity_*.pt: the published code (github.com/fanyihua0309/Low-FaceNet) run on the CPU.

    git clone https://github.com/fanyihua0309/Low-FaceNet UPSTREAM && git -C UPSTREAM checkout 8787682
    python tests/reference/make_reference.py UPSTREAM OUT 1 --inputs tests/reference    # the stored inputs again
    python tests/reference/make_reference.py UPSTREAM OUT 1 --compare tests/reference  # ... and the differences
    python tests/reference/make_reference.py UPSTREAM OUT 2                             # fresh inputs from seed 2

Every module with stored weights (enhance, VGG16 features, FaceNet, DeepLabV3+) is filled with the parity weights of
SPEC section 1 (tests/parity_weights.py, seed SEED); RetinaFace uses the published weights in tests/weights/. The
published classes run unchanged: `.cuda()` is made a no-op (the published code's CUDA branches still run, as they
did on the GPU: FaceNet's input there is scaled back by 255), torch.load maps to the CPU and torchvision's
ImageNet VGG16 is replaced by the formula-filled one. With --inputs REF the inputs (images, tensors, labels, the
face database of train_path) are read from REF's files, so that only the outputs are recomputed; without it they
are drawn from SEED (skimage's public-domain astronaut for the face files). Writes OUT/parity_{enhance,losses,
metrics,segmentation,face,weights_probe}.pt with the keys of tests/reference/; --compare REF prints, for every
tensor, its largest difference from REF's relative to REF's largest value. Not part of the test suite: it needs the
published checkout (and scipy, which the published colour loss imports).
"""
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for utils.checks
from utils.checks import ArgumentParser  # noqa: E402


def parse_args(argv=None):
    """The arguments; a folder that is not the published checkout stops here in one line, before torch loads."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("upstream", help="checkout of github.com/fanyihua0309/Low-FaceNet")
    p.add_argument("out", help="folder for the parity_*.pt files")
    p.add_argument("seed", type=int, help="seed of the parity weights (1 in tests/reference) and of fresh inputs")
    p.add_argument("--inputs", default=None, help="take the inputs from this folder's parity_*.pt (for a diff)")
    p.add_argument("--compare", default=None, help="take the inputs from this folder and print the differences")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.upstream, "model.py")):
        sys.exit(f"error: {args.upstream}: not a checkout of the published code (no model.py); get one with "
                 f"`git clone https://github.com/fanyihua0309/Low-FaceNet {args.upstream}`")
    args.upstream = os.path.abspath(args.upstream)
    return args


if __name__ == "__main__":
    parse_args()  # --help and a wrong checkout answer here, before the imports below load torch

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from parity_weights import formula_value, parity_state_dict  # noqa: E402

RETINAFACE = TESTS / "weights" / "Retinaface_mobilenet0.25.pth"
LOSS_DOC = ("contrast_feature=mean(ContrastLoss(enhanced,pos,neg)); contrast_brightness likewise; perceptual="
            "PerceptualLoss(input, enhanced); color=ColorLoss(enhanced, pos); smooth=SmoothLoss(input, illumination) "
            "(grad w.r.t. illumination); seg_brightness=SegBrightnessLoss(enhanced, seg_labels); grads are "
            "d(value)/d(enhanced) unless noted. Loss weights in training: 0.62 contrast_feature, 0.22 "
            "contrast_brightness, 1 perceptual, 0.05 color, 0.65 smooth, 1 seg_brightness, 1 face (cross-entropy over "
            "cosine similarities).")


def run_on_cpu():
    """The published code on a machine without CUDA: .cuda() returns its object, torch.load maps to the CPU."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    load = torch.load
    torch.load = lambda f, *args, **kwargs: load(f, *args, **{"map_location": "cpu", **kwargs})


def filled(module, tag, seed):
    module.load_state_dict(parity_state_dict(module.state_dict(), tag, seed), strict=True)
    return module


class Inputs:
    """The inputs of each file: REF's stored ones (--inputs), else drawn from the seed."""

    def __init__(self, ref, seed):
        self.ref, self.g = ref, torch.Generator().manual_seed(seed)

    def stored(self, name):
        return torch.load(Path(self.ref) / f"parity_{name}.pt", weights_only=True) if self.ref else None

    def rand(self, *shape, scale=1.0):
        return torch.rand(*shape, generator=self.g) * scale


def enhance_file(upstream_inputs, seed):
    from model import EnhanceNet
    stored = upstream_inputs.stored("enhance")
    x = stored["input"] if stored else upstream_inputs.rand(2, 3, 40, 56, scale=0.3)
    net = filled(EnhanceNet(), "enhance", seed).eval()
    with torch.no_grad():
        r, i = net(x)
    return {"input": x, "r": r, "i": i}


def vgg16_filled(seed):
    from torchvision.models import vgg16
    model = vgg16(weights=None)
    filled(model.features, "vgg16.features", seed)
    return model


def losses_file(inputs, seed):
    import loss.contrast_loss as contrast
    import loss.losses as others
    from loss.color_loss import ColorLoss
    from loss.smooth_loss import SmoothLoss
    fake_vgg16 = lambda pretrained=False, **kwargs: vgg16_filled(seed)  # noqa: E731 (torchvision's ImageNet weights)
    contrast.vgg16 = others.vgg16 = fake_vgg16
    stored = inputs.stored("losses")
    if stored:
        t = {k: stored[k] for k in ("enhanced", "positives", "negatives", "input", "illumination", "seg_labels")}
    else:
        # channel means far apart: with equal means the colour-constancy gradient is float32 rounding noise
        channels = torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
        t = {"enhanced": inputs.rand(2, 3, 48, 48) * channels, "positives": inputs.rand(2, 3, 48, 48),
             "negatives": inputs.rand(2, 3, 48, 48, scale=0.3), "input": inputs.rand(2, 3, 48, 48, scale=0.3),
             "illumination": inputs.rand(2, 3, 48, 48).clamp(1e-4, 1),
             "seg_labels": torch.randint(0, 11, (2, 48, 48), generator=inputs.g)}
    terms = {
        "contrast_feature": (contrast.ContrastLoss(), lambda m, x: m(x, t["positives"], t["negatives"]).mean()),
        "contrast_brightness": (contrast.ContrastBrightnessLoss(),
                                lambda m, x: m(x, t["positives"], t["negatives"]).mean()),
        "perceptual": (others.PerceptualLoss(), lambda m, x: m(t["input"], x)),
        "color": (ColorLoss(), lambda m, x: m(x, t["positives"])),
        "smooth": (SmoothLoss(), lambda m, x: m(t["input"], x)),
        "seg_brightness": (others.SegBrightnessLoss(), lambda m, x: m(x, t["seg_labels"])),
        "color_consistency": (others.ColorConsistencyLoss(), lambda m, x: m(x).mean()),
    }
    values, grads = {}, {}
    for name, (module, call) in terms.items():
        x = (t["illumination"] if name == "smooth" else t["enhanced"]).clone().requires_grad_(True)
        value = call(module, x)
        value.backward()
        values[name], grads[name] = value.detach().reshape(()), x.grad
    return {**t, "values": values, "grads": grads, "doc": LOSS_DOC}


def metrics_file(inputs, seed):
    from metric.psnr import compute_psnr
    from metric.ssim import SSIM
    stored = inputs.stored("metrics")
    pred, gt = (stored["pred"], stored["gt"]) if stored else (inputs.rand(1, 3, 64, 80), inputs.rand(1, 3, 64, 80))
    with torch.no_grad():
        return {"pred": pred, "gt": gt, "psnr": compute_psnr(pred, gt), "ssim": SSIM()(pred, gt),
                "doc": "metric.psnr.compute_psnr and metric.ssim.compute_ssim of the published code on [0,1] RGB "
                       "tensors"}


def segmentation_file(inputs, seed):
    from seg_module.modeling import deeplabv3plus_mobilenet
    stored = inputs.stored("segmentation")
    x = stored["input_normalized"] if stored else torch.randn(1, 3, 64, 72, generator=inputs.g)
    model = deeplabv3plus_mobilenet(num_classes=11, output_stride=16, pretrained_backbone=False)
    filled(model, "deeplab", seed)
    with torch.no_grad():
        return {"input_normalized": x, "logits": model.eval()(x)}


def face_file(inputs, seed, tmp):
    import cv2
    from face_module.nets.facenet import Facenet
    from face_module import retinaface as published
    stored = inputs.stored("face")
    facenet_path = os.path.join(tmp, "facenet_mobilenet.pth")
    torch.save(filled(Facenet(backbone="mobilenet", mode="predict"), "facenet", seed).state_dict(), facenet_path)
    detector = published.Retinaface(encoding=1, facenet_model_path=facenet_path, retinaface_model_path=str(RETINAFACE))
    if stored:
        images = {k: stored[k]["image_uint8_rgb"].numpy() for k in ("astronaut", "astronaut_dark")}
    else:
        from skimage import data
        bright = data.astronaut()
        images = {"astronaut": bright,
                  "astronaut_dark": ((bright / 255.0) ** 2.2 * 255).astype(np.uint8)}
    out = {}
    for name, image in images.items():
        path = os.path.join(tmp, f"{name}.png")
        cv2.imwrite(path, image[..., ::-1])
        letterboxed = published.letterbox_image_origin(np.array(image, np.float32), [640, 640])
        x = torch.from_numpy(published.preprocess_input(letterboxed).transpose(2, 0, 1)).unsqueeze(0).float()
        with torch.no_grad():
            loc, conf, landms = detector.net(x)
        crops = []
        facenet = detector.facenet
        detector.facenet = lambda batch: crops.append(batch) or facenet(batch)
        encoding_path = os.path.join(tmp, f"{name}_encoding.npy")
        detector.encode_face_dataset([path], [name], encoding_path, os.path.join(tmp, f"{name}_names.npy"))
        detector.facenet = facenet
        out[name] = {"image_uint8_rgb": torch.from_numpy(np.ascontiguousarray(image)),
                     "dets": detections(detector, image), "raw_loc": loc, "raw_conf": conf, "raw_landms": landms,
                     "embedding": torch.from_numpy(np.load(encoding_path)[0]), "facenet_input": crops[0]}
    out["train_path"] = train_path(detector, stored, out, inputs)
    out["database"] = out["train_path"]["database"]
    out["doc"] = ("RetinaFace uses the published Retinaface_mobilenet0.25.pth (shared/weights). dets rows: x1,y1,x2,y2,"
                  "score,then 5 landmarks (x,y) in original pixels, after letterbox 640, confidence 0.5, NMS 0.3. "
                  "embedding: published face-database encoding of the biggest face; FaceNet weights: "
                  "formula_value('facenet.NAME', ...).")
    return out


def detections(detector, image):
    """Every detection of the published pipeline (letterbox 640, decode, confidence 0.5, NMS 0.3) in image pixels."""
    from face_module import retinaface as published
    h, w = image.shape[:2]
    letterboxed = published.letterbox_image_origin(np.array(image, np.float32), [640, 640])
    x = torch.from_numpy(published.preprocess_input(letterboxed).transpose(2, 0, 1)).unsqueeze(0).float()
    with torch.no_grad():
        loc, conf, landms = detector.net(x)
        boxes = published.decode(loc.data.squeeze(0), detector.anchors, detector.cfg["variance"])
        landms = published.decode_landm(landms.data.squeeze(0), detector.anchors, detector.cfg["variance"])
        rows = torch.cat([boxes, conf.data.squeeze(0)[:, 1:2], landms], -1)
        rows = published.non_max_suppression(rows, detector.confidence)
        rows = published.retinaface_correct_boxes(rows, np.array([640, 640]), np.array([h, w]))
    rows[:, :4] = rows[:, :4] * [w, h, w, h]
    rows[:, 5:] = rows[:, 5:] * ([w, h] * 5)
    return torch.as_tensor(np.asarray(rows, np.float64))


def train_path(detector, stored, out, inputs):
    """Retinaface.detect_image, the differentiable path of the published face loss, on a 384x384 [0,1] image."""
    from face_module import retinaface as published
    if stored:
        ref = stored["train_path"]
        image, database, label = ref["image"], ref["database"], ref["label"]
    else:
        astronaut = out["astronaut"]["image_uint8_rgb"].permute(2, 0, 1)[None].float() / 255
        image = F.interpolate(astronaut, size=(384, 384), mode="bilinear", align_corners=False, antialias=True)
        database = F.normalize(torch.randn(7, 128, generator=inputs.g), dim=1)
        database[3] = out["astronaut"]["embedding"]
        label = torch.tensor([3])
    detector.known_face_encodings = database.numpy()
    boxes = []
    correct = published.retinaface_correct_boxes
    published.retinaface_correct_boxes = lambda *a: boxes.append(correct(*a)) or boxes[-1]
    x = image.clone().requires_grad_(True)
    cos = detector.detect_image(x)
    published.retinaface_correct_boxes = correct
    loss = F.cross_entropy(cos[None], label)
    loss.backward()
    rows = boxes[0]  # detect_image has scaled these rows to pixels in place
    biggest = max(rows, key=lambda b: (int(b[2]) - int(b[0])) * (int(b[3]) - int(b[1])))
    return {"image": image, "database": database, "label": label,
            "box": torch.as_tensor(np.asarray(biggest, np.float64)),
            "cos": cos.detach(), "face_loss": loss.detach(), "grad_image": x.grad,
            "doc": "Retinaface.detect_image on a 1x3x384x384 [0,1] image: detection without gradient, then crop of the "
                   "differentiable tensor, eye-line rotation, letterbox to 160 with 128/255 padding, FaceNet, cosine "
                   "similarity to every database encoding = the logits of the face loss (cross-entropy, label 3)."}


def weights_probe_file(seed, tags=("enhance", "vgg16.features", "facenet", "deeplab")):
    manifests = TESTS / "reference" / "manifests"
    shapes = {tag: json.loads((manifests / f"{name}.json").read_text())["keys"] for tag, name in
              (("enhance", "lowfacenet_enhance"), ("facenet", "facenet_mobilenet"),
               ("deeplab", "deeplabv3plus_mobilenet_lapa"))}
    from torchvision.models import vgg16
    shapes["vgg16.features"] = {k: list(v.shape) for k, v in vgg16(weights=None).features.state_dict().items()}
    probe = {"seed": torch.tensor(seed), "doc": "for each formula-filled module (tag) and state-dict entry: [sum in "
             "float64, first value, last value] of formula_value(tag.NAME, shape, seed); checks an implementation of "
             "the formula"}
    for tag in tags:
        entries = shapes[tag]
        probe[tag] = {}
        for key, shape in entries.items():
            if key.endswith("num_batches_tracked"):
                continue
            values = torch.from_numpy(formula_value(f"{tag}.{key}", tuple(shape), seed).astype(np.float32)).double()
            probe[tag][key] = torch.stack([values.sum(), values.flatten()[0], values.flatten()[-1]])
    return probe


def compare(out, ref):
    """Per tensor of every file: largest |OUT - REF| / largest |REF|."""
    def walk(a, b, prefix):
        for k, v in b.items():
            if isinstance(v, dict):
                walk(a.get(k, {}), v, f"{prefix}{k}.")
            elif torch.is_tensor(v):
                if k not in a:
                    print(f"{prefix}{k}: missing")
                    continue
                w = a[k]
                if w.shape != v.shape:
                    print(f"{prefix}{k}: shape {tuple(w.shape)} != {tuple(v.shape)}")
                    continue
                v64, w64 = v.double(), w.double()
                top = v64.abs().max().item() or 1.0
                print(f"{prefix}{k}: {(w64 - v64).abs().max().item() / top:.3g}")
    for path in sorted(Path(ref).glob("parity_*.pt")):
        mine = Path(out) / path.name
        if mine.exists():
            walk(torch.load(mine, weights_only=True), torch.load(path, weights_only=True), f"{path.stem}: ")


def main():
    args = parse_args()
    upstream = args.upstream
    sys.path.insert(0, upstream)
    run_on_cpu()
    torch.manual_seed(args.seed)
    inputs = Inputs(args.inputs or args.compare, args.seed)
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"enhance": lambda: enhance_file(inputs, args.seed), "losses": lambda: losses_file(inputs, args.seed),
                 "metrics": lambda: metrics_file(inputs, args.seed),
                 "segmentation": lambda: segmentation_file(inputs, args.seed),
                 "face": lambda: face_file(inputs, args.seed, tmp),
                 "weights_probe": lambda: weights_probe_file(args.seed)}
        for name, make in files.items():
            torch.save(make(), os.path.join(args.out, f"parity_{name}.pt"))
            print(f"wrote {os.path.join(args.out, f'parity_{name}.pt')}")
    if args.compare:
        compare(args.out, args.compare)


if __name__ == "__main__":
    main()
