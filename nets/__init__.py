"""The networks of Low-FaceNet and a table of their published checkpoint formats.

    model = nets.load("enhance", "checkpoint/Low-FaceNet.pth", device)

Every file goes through utils.checkpoint.load_weights (torch.load with weights_only=True, strict keys,
one-line errors that name the file, the expected format and the first missing/unexpected key).
"""
from dataclasses import dataclass, field
from typing import Callable

from utils.checkpoint import load_weights

DRIVE = ("the authors' Google Drive: run `python -m utils.download`, or download it by hand (link in the published "
         "README) into checkpoint/")


@dataclass(frozen=True)
class Format:
    build: Callable  # () -> nn.Module
    published_name: str
    container: str = "bare"  # 'bare' state dict, or the key that holds it
    strip_prefix: str = ""
    ignore_prefixes: tuple = field(default_factory=tuple)
    source: str = DRIVE


def _build(module, name, *args):
    """A constructor that imports its module only when called."""
    def build():
        import importlib
        return getattr(importlib.import_module(f"nets.{module}"), name)(*args)
    return build


FORMATS = {
    "enhance": Format(_build("enhance", "EnhanceNet"), "Low-FaceNet.pth",
                      source=DRIVE + " (or an epochN.pth written by train.py)"),
    "retinaface": Format(_build("retinaface", "RetinaFace"), "Retinaface_mobilenet0.25.pth",
                         source=DRIVE + " (it is biubug6/Pytorch_Retinaface's mobilenet0.25_Final.pth)"),
    "facenet_mobilenet": Format(_build("facenet", "FaceNet", "mobilenet"), "facenet_mobilenet.pth",
                                ignore_prefixes=("classifier.",),
                                source=DRIVE + " (or bubbliiiing/facenet-pytorch's release)"),
    "facenet_inception_resnetv1": Format(_build("facenet", "FaceNet", "inception_resnetv1"),
                                         "facenet_inception_resnetv1.pth", ignore_prefixes=("classifier.",),
                                         source="bubbliiiing/facenet-pytorch's release; put it in checkpoint/"),
    "deeplab": Format(_build("deeplab", "deeplabv3plus_mobilenet"), "best_deeplabv3plus_mobilenet_lapa_epoch96.pth",
                      container="model_state"),
    "unique": Format(_build("unique", "UNIQUE"), "unique.pt", strip_prefix="module.",
                     source=DRIVE + " (it is github.com/zwx8981/UNIQUE's model.pt)"),
}


def load(kind, path, device="cpu"):
    """Build the network `kind` (a key of FORMATS), load `path` into it strictly, move it to `device`, eval mode."""
    fmt = FORMATS[kind]
    model = load_weights(fmt.build(), path, container=fmt.container, strip_prefix=fmt.strip_prefix,
                         ignore_prefixes=fmt.ignore_prefixes,
                         source_hint=f"The published {fmt.published_name} comes from {fmt.source}.")
    return model.to(device).eval()
