"""The networks of Low-FaceNet and a table of their published checkpoint formats.

    model = nets.load("enhance", "checkpoint/Low-FaceNet.pth", device)

Every file goes through utils.checkpoint.load_weights (torch.load with weights_only=True, strict keys,
one-line errors that name the file, the expected format and the first missing/unexpected key).
"""
from dataclasses import dataclass, field
from typing import Callable

from utils.checkpoint import load_weights

DRIVE = "the Low-FaceNet release (Google Drive link in the published README); put it in checkpoint/"


@dataclass(frozen=True)
class Format:
    build: Callable  # () -> nn.Module
    published_name: str
    container: str = "bare"  # 'bare' state dict, or the key that holds it
    strip_prefix: str = ""
    ignore_prefixes: tuple = field(default_factory=tuple)
    source: str = DRIVE


def _enhance():
    from nets.enhance import EnhanceNet
    return EnhanceNet()


FORMATS = {
    "enhance": Format(_enhance, "Low-FaceNet.pth", source=DRIVE + " (or an epochN.pth written by train.py)"),
}


def load(kind, path, device="cpu"):
    """Build the network `kind` (a key of FORMATS), load `path` into it strictly, move it to `device`, eval mode."""
    fmt = FORMATS[kind]
    model = load_weights(fmt.build(), path, container=fmt.container, strip_prefix=fmt.strip_prefix,
                         ignore_prefixes=fmt.ignore_prefixes,
                         source_hint=f"The published {fmt.published_name} comes from {fmt.source}.")
    return model.to(device).eval()
