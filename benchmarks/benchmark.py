"""Speed of Low-FaceNet on this machine, measured in one run: prints a table and writes it as JSON.

    python benchmarks/benchmark.py                                   # CPU: every part (about 20 minutes on 2 cores)
    python benchmarks/benchmark.py --quick                           # smoke run: small sizes, one repeat
    python benchmarks/benchmark.py --device cuda --precision bf16 --json benchmarks/cuda.json   # (--amp: the same)
    python benchmarks/benchmark.py --device cuda --precision tf32 --compile --json benchmarks/cuda_tf32.json
    python benchmarks/benchmark.py --device cuda --full --json benchmarks/results_cuda.json   # the whole GPU table

Parts
  0 model     the enhancement network's size: parameters, and FLOPs of one forward at 384x384 and 1024x1024 (counted
              on PyTorch's meta device: nothing is computed, the figures are exact and the same on every machine)
  1 ceiling   one dense 3x3 convolution, 128->128 channels at 384x384, in the --precision (fp32, tf32 or bf16),
              channels_last (the layout the project computes in): the machine's achievable GFLOP/s, the denominator
  2 enhance   the enhancement network alone (inference, nets.enhance.enhance) at 384x384 and 1024x1024, and in
              batches of --test_batch at 384x384
  3 test.py   test.main on a folder of JPEGs of 384x384 (64; 1024 on a GPU) in batches of --test_batch (1 on the CPU,
              16 on a GPU), the model loaded beforehand (its loading is not timed): images/s, and the ratio to part
              2's rate at that batch size, which is timed again beside each of the three runs (a shared machine's
              speed drifts over minutes)
  4 large     a 4096x4096 and a 6000x4000 image through enhance() in test.py's tiles (512, halo 11): time, peak memory
  5 train     one training step (batch 2, 384x384, all losses, train.py's train_step): time, images/s, peak memory,
              a breakdown into parts and the roofline efficiency = the step's FLOPs / step time / ceiling
  6 train_largest  (CUDA) the same at the largest batch that fits: batches 4, 8, 16, ... until one runs out of memory
  7 eval.py   eval.main on 256 face images (recognition, detection batched; 2048 on a GPU): images/s
  8 precision each --precision's pixels against the CPU's float32 result (levels of 255, max and mean) of the
              enhancement network on 8 images of 384x384 (--enhance_checkpoint's weights, else random ones)
  9 loader    train.py's loader alone (TrainSet in a DataLoader with train.py's default --num_workers, batches of 8,
              resized on the device) on 512x512 JPEGs and their parsing maps: items/s, per worker, and the bytes of
              one item as the workers send it
 10 bf16_peak (CUDA) the GPU's dense bf16 peak: its data sheet's (BF16_PEAK_TFLOPS) and a bf16 matrix product of
              8192x8192 timed here
 11 --full    every part above but train_largest, and the training step at batch 2, 32 and 64 and the largest
              that fits (128, 256, ... until one runs out of memory), in fp32, tf32 and bf16, eager and compiled,
              each in a process of its own: time per image, peak GPU memory, and the fraction of the GPU's dense bf16
              peak (part 10: the data sheet's where the GPU is known, else the matrix product's); about an hour on
              one GPU, most of it compiling; the other parts in --precision

FLOPs are counted by forward hooks on every nn.Conv2d and nn.Linear (FlopCounter): a call's forward is 2 x its
multiply-adds (output elements x input channels per group x kernel area; output elements x input features);
its backward adds 2 x that when the layer's weights train, 1 x when only the input gradient passes (the frozen
VGG and FaceNet on the enhanced image), nothing where no gradient flows (VGG on positives, negatives and the
input; the detector). The training step does only necessary work (each image's VGG trunk once), so its count
is its necessary FLOPs. Functional convolutions (the colour loss's blur, 0.03 GFLOP) are not counted.
Memory: every part runs in a process of its own, whose peak resident set (ru_maxrss; torch itself is about
0.35 GiB of it) is that part's; on CUDA also torch.cuda.max_memory_allocated.
Weights: speed does not depend on their values. The enhancement network and VGG16 are randomly initialised.
RetinaFace and FaceNet come from --retinaface_checkpoint / --facenet_checkpoint or, where those files are
absent, stand-ins: the published detector the tests carry (tests/weights/) and a seeded random FaceNet, so that
real faces are found and the face loss really runs. Face photos: --faces, or utils.face_photos' synthetic ones.
"""
import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.checks import ArgumentParser, add_precision_flags, device_name, integer  # noqa: E402

TEST_RETINAFACE = ROOT / "tests" / "weights" / "Retinaface_mobilenet0.25.pth"  # the published detector
ENHANCE_MACS_PER_PIXEL = 458_928
PART_NAMES = ("model", "ceiling", "enhance", "test_py", "large", "large_4096x4096", "large_6000x4000", "train",
              "train_largest", "eval_py", "precision", "loader", "bf16_peak")
FULL_BATCHES = (2, 32, 64)  # --full: the published batch and the batches of the GPU target
# dense bf16 tensor-core peaks of the data sheets, TFLOP/s, by a part of the GPU's name (the first that matches)
BF16_PEAK_TFLOPS = (("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989),
                    ("B200", 2250), ("A100", 312), ("L40S", 362), ("L4", 121), ("A10", 125), ("RTX 4090", 165))


def part_names(text):
    """argparse type: a comma-separated subset of PART_NAMES ('large' is both large images)."""
    if not text or not set(text.split(",")) <= set(PART_NAMES):
        raise argparse.ArgumentTypeError(f"a comma-separated subset of {','.join(PART_NAMES)} is allowed, "
                                         f"not {text!r}")
    return text


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1")
    add_precision_flags(p)
    p.add_argument("--compile", action="store_true", help="the training parts with train.py --compile")
    p.add_argument("--test_batch", type=integer(1), default=None, help="test.py's batch size (default: 1 on the CPU, "
                   "16 on a GPU)")
    p.add_argument("--enhance_checkpoint", default="checkpoint/Low-FaceNet.pth", help="weights of the precision part "
                   "(random ones where the file is absent)")
    p.add_argument("--json", default="benchmarks/results.json", help="where the results go")
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repeat; figures not meaningful")
    p.add_argument("--repeat", type=integer(1), default=None, help="timed repeats of the short parts (the median is "
                   "reported; default 5, 1 with --quick)")
    p.add_argument("--parts", type=part_names,
                   default="model,ceiling,enhance,test_py,large,train,train_largest,eval_py,precision,loader",
                   help="comma-separated subset")
    p.add_argument("--full", action="store_true", help="the whole GPU table in one run: every part, and the training "
                   "step at batch 2, 32, 64 and the largest that fits in fp32, tf32 and bf16, eager and compiled")
    p.add_argument("--retinaface_checkpoint", default="checkpoint/Retinaface_mobilenet0.25.pth", help="the detector "
                   "(the published copy in tests/weights/ where this file is absent)")
    p.add_argument("--facenet_checkpoint", default="checkpoint/facenet_mobilenet.pth", help="FaceNet (seeded random "
                   "weights where this file is absent)")
    p.add_argument("--vgg_checkpoint", default=None, help="a local VGG16 file (default: random weights)")
    p.add_argument("--faces", default=None, help="face photos in LFW layout (NAME/NAME_NNNN.jpg) for the training "
                   "batch and eval.py (default: utils.face_photos' synthetic photos)")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    return args


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the imports below load torch

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from nets.enhance import EnhanceNet, enhance, init_weights, training_layout  # noqa: E402
from nets.face_recognition import FaceRecognitionLoss  # noqa: E402
from nets.facenet import FaceNet, load_facenet  # noqa: E402
from nets.losses import LowFaceNetObjective, seg_brightness_loss  # noqa: E402
from nets.retinaface import load_retinaface  # noqa: E402
from nets.vgg import load_vgg16, vgg16_trunk  # noqa: E402
from utils.face_photos import make_face_photos  # noqa: E402
import nets  # noqa: E402
from utils.checks import PRECISIONS  # noqa: E402
from utils.images import list_images, read_image, to_tensor, to_uint8, uint8_images, write_image  # noqa: E402
from utils.runtime import (autocast as runtime_autocast, keep_freed_memory, median_seconds, resolve_device,  # noqa: E402
                           set_precision, synchronize, timed)

# -----------------------------------------------------------------------------
# measuring


class FlopCounter:
    """FLOPs of every nn.Conv2d / nn.Linear call made inside `with FlopCounter() as c:` (see the docstring)."""

    def __enter__(self):
        self.forward = self.backward = 0
        self.handle = nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def hook(self, module, inputs, output):
        if isinstance(module, nn.Conv2d):
            macs = output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            macs = output.numel() * module.in_features
        else:
            return
        self.forward += 2 * macs
        if output.requires_grad:
            self.backward += 2 * macs * (2 if module.weight.requires_grad else 1)


def autocast(args, device):
    return runtime_autocast(device, args.precision)


@contextlib.contextmanager
def replaced(owner, name, value):
    """owner.name is `value` inside the block."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def quiet():
    """Silence a script's progress bars and prints."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield

# -----------------------------------------------------------------------------
# data and weights


def random_image(rng, h, w):
    """An HxWx3 uint8 low-light picture: smooth random shapes, texture and noise (what JPEG and the network see)."""
    coarse = rng.random((h // 32 + 2, w // 32 + 2, 3)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(h, w),
                                             mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    image = 0.35 * smooth + 0.05 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def face_photos(args, tmp):
    return sorted(Path(args.faces or make_face_photos(os.path.join(tmp, "faces"))).rglob("*.jpg"))


def face_weights(args, tmp):
    """(RetinaFace path, FaceNet path, note): the given checkpoints, or the stand-ins."""
    note = []
    retinaface = args.retinaface_checkpoint
    if not os.path.isfile(retinaface):
        retinaface = str(TEST_RETINAFACE)
        note.append(f"RetinaFace: stand-in {retinaface}")
    facenet = args.facenet_checkpoint
    if not os.path.isfile(facenet):
        facenet = os.path.join(tmp, "facenet_mobilenet.pth")
        torch.manual_seed(0)
        torch.save(FaceNet("mobilenet").state_dict(), facenet)
        note.append("FaceNet: stand-in random weights (seed 0)")
    return retinaface, facenet, "; ".join(note)


def enhancement_model(device):
    return init_weights(EnhanceNet()).to(device).eval()

# -----------------------------------------------------------------------------
# parts: each returns a dict of figures


def ceiling(args, device, repeat=30):
    """Part 1: GFLOP/s of one dense 3x3 convolution, 128->128 channels, channels_last, median of `repeat` calls."""
    size = 128 if args.quick else 384
    conv = nn.Conv2d(128, 128, 3, padding=1).to(device, memory_format=torch.channels_last).eval()
    x = torch.rand(1, 128, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(args, device):
        t = median_seconds(lambda: conv(x), device, max(args.repeat, repeat))
    flops = 2 * 128 * 128 * 9 * size * size
    return {"size": size, "seconds": t, "gflop": flops / 1e9, "gflops": flops / t / 1e9}


def part_model(args, device, tmp, sizes=(384, 1024)):
    """Part 0: parameters of the enhancement network and the FLOPs (FlopCounter) of one forward at each size."""
    model = enhancement_model(torch.device("meta"))  # shapes only: the counts without computing
    out = {"parameters": sum(p.numel() for p in model.parameters())}
    for size in sizes:
        with FlopCounter() as counter, torch.no_grad():
            model(torch.zeros(1, 3, size, size, device="meta"))
        out[f"gflop_{size}x{size}"] = counter.forward / 1e9
    return out


def part_ceiling(args, device, tmp):
    return ceiling(args, device)


def part_enhance(args, device, tmp):
    model = enhancement_model(device)
    out = {}
    for size in (128, 256) if args.quick else (384, 1024):
        x = torch.rand(1, 3, size, size, device=device)
        with FlopCounter() as counter:
            enhance(model, x)
        flops = 2 * ENHANCE_MACS_PER_PIXEL * size * size
        assert counter.forward == flops, (counter.forward, flops)  # the hooks count what the issue states
        with autocast(args, device):
            t = median_seconds(lambda: enhance(model, x), device, args.repeat)
        out[f"{size}x{size}"] = {"seconds": t, "gflop": flops / 1e9, "gflops": flops / t / 1e9,
                                 "ceiling_beside": ceiling(args, device, 9)["gflops"]}
    if args.test_batch > 1:  # test.py's batches
        size = 128 if args.quick else 384
        x = torch.rand(args.test_batch, 3, size, size, device=device)
        with autocast(args, device):
            t = median_seconds(lambda: enhance(model, x), device, args.repeat)
        flops = 2 * ENHANCE_MACS_PER_PIXEL * size * size * args.test_batch
        out[f"{size}x{size} in batches of {args.test_batch}"] = {
            "seconds": t, "gflop": flops / 1e9, "gflops": flops / t / 1e9, "images_per_s": args.test_batch / t,
            "ceiling_beside": ceiling(args, device, 9)["gflops"]}
    return out


def part_test_py(args, device, tmp):
    import test as test_script
    count, size = (8, 128) if args.quick else (1024 if device.type == "cuda" else 64, 384)
    rng = np.random.default_rng(0)
    for i in range(count):
        write_image(random_image(rng, size, size), os.path.join(tmp, "in", f"img_{i:03d}.jpg"))
    model = enhancement_model(device)
    checkpoint = os.path.join(tmp, "enhance.pth")
    torch.save(model.state_dict(), checkpoint)
    x = torch.rand(args.test_batch, 3, size, size, device=device)
    loaded = nets.load("enhance", checkpoint, device)
    runs, ratios = [], []
    for run in range(1 if args.quick else 3):
        argv = ["--underexposed_path", os.path.join(tmp, "in"), "--enhanced_path", os.path.join(tmp, f"out{run}"),
                "--enhance_checkpoint", checkpoint, "--device", str(device), "--precision", args.precision,
                "--batch_size", str(args.test_batch)]
        with quiet(), replaced(nets, "load", lambda *_: loaded):  # the model's loading is not timed
            code, t = timed(lambda: test_script.main(argv), device)
        assert code == 0 and len(list_images(os.path.join(tmp, f"out{run}"))[0]) == count
        with autocast(args, device):  # part 2 again, beside each run: a shared machine's speed drifts in minutes
            alone = median_seconds(lambda: enhance(model, x), device, max(args.repeat, 9))
        runs.append(t)
        ratios.append(count / t * alone / args.test_batch)
    t = statistics.median(runs)
    return {"images": count, "size": f"{size}x{size}", "batch": args.test_batch, "seconds": t,
            "images_per_s": count / t, "of_network_alone": statistics.median(ratios)}


def part_large(args, device, tmp, h, w):
    import test as test_script
    tile = test_script.parse_args([]).tile
    h, w, tile = (h // 4, w // 4, tile // 2) if args.quick else (h, w, tile)
    model = enhancement_model(device)
    image = random_image(np.random.default_rng(0), h, w)

    def run():
        with autocast(args, device):
            return to_uint8(enhance(model, to_tensor(image)[None].to(device), tile=tile)[0].float())
    t = timed(run, device)[1]
    flops = 2 * ENHANCE_MACS_PER_PIXEL * h * w
    return {"size": f"{w}x{h}", "tile": tile, "seconds": t, "gflop": flops / 1e9, "gflops": flops / t / 1e9,
            "ceiling_beside": ceiling(args, device, 9)["gflops"]}


def training_setup(args, device, tmp, batch_size=2):
    """(model, objective, optimizer, monitor, batch, note) as train.py builds them, a batch of real faces."""
    import train
    size = 128 if args.quick else 384
    retinaface, facenet_path, note = face_weights(args, tmp)
    vgg = load_vgg16(args.vgg_checkpoint, device) if args.vgg_checkpoint else vgg16_trunk().to(device)
    database = torch.nn.functional.normalize(torch.randn(2185, 128), dim=1)  # LaPa-Face: 2185 identities
    face_loss = FaceRecognitionLoss(load_retinaface(retinaface, device), load_facenet(facenet_path, device=device),
                                    database)
    objective = LowFaceNetObjective(vgg, face_loss).to(device)
    layout = training_layout(device, args.precision == "bf16")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as train.py: a step's shapes are fixed
    model = init_weights(EnhanceNet()).to(device, memory_format=layout).train()
    optimizer = train.make_optimizer(model, train.parse_args([]))
    photos = face_photos(args, tmp)
    images = torch.stack([to_tensor(read_image(str(photos[k % len(photos)]))) for k in range(3 * batch_size)])
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    low, pos, neg = images[:batch_size] * 0.35, images[batch_size:2 * batch_size], images[2 * batch_size:] * 0.35
    seg = torch.randint(0, 11, (batch_size, size, size))
    labels = torch.randint(0, len(database), (batch_size,))
    batch = [t.to(device) for t in (low, seg, labels, pos, neg)]
    return model, objective, optimizer, train.StepMonitor(device), batch, note


def training_step(args, model, objective, optimizer, monitor, batch):
    """One step of train.py (its own function, the finite checks on the device included); the face logits."""
    from train import train_step
    return train_step(model, objective, optimizer, batch, monitor, args.precision)[3]


def training_step_in_parts(args, device, model, objective, optimizer, batch):
    """The same step with the graph cut at the enhanced image, the VGG taps and the FaceNet embeddings, so that
    each part's forward and backward can be timed alone: {part: seconds}."""
    low, seg, labels, pos, neg = batch
    face = objective.face_loss
    optimizer.zero_grad(set_to_none=True)
    times = {}

    def part(name, fn):
        result, times[name] = timed(fn, device)
        return result

    def cut(t):
        return t.detach().requires_grad_()

    def losses():
        terms = objective.image_terms(e, i, low, pos, neg, seg, (taps, *features[1:]))
        terms["face"] = face.loss(codes, found, labels)[0]
        return objective.total(terms)

    def optimize():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
    with autocast(args, device):
        enhanced, illumination = part("enhancement forward", lambda: model(low))
        e, i = cut(enhanced), cut(illumination)
        features = part("VGG forward (enhanced with gradient; positives, negatives, input without)",
                        lambda: objective.features(e, low, pos, neg))
        taps = [cut(f) for f in features[0]]
        rows = part("detector (once per batch, no gradient)", lambda: face.detect(e))
        embeddings, found = part("face crops + FaceNet forward", lambda: face.embed(e, rows))
        codes = cut(embeddings)
        total = part("losses forward", losses)
    part("losses backward", total.backward)
    part("FaceNet + crops backward", lambda: embeddings.backward(codes.grad))
    part("VGG backward (input gradient only)", lambda: torch.autograd.backward(features[0], [t.grad for t in taps]))
    part("enhancement backward", lambda: torch.autograd.backward([enhanced, illumination], [e.grad, i.grad]))
    part("optimizer (clip + Adam)", optimize)
    grey = cut(enhanced)
    part("of the losses: segmentation loss forward + backward", lambda: seg_brightness_loss(grey, seg).backward())
    return times


def train_figures(args, device, tmp, batch_size, parts=False):
    """Figures of training steps at `batch_size`: time, images/s, FLOPs, faces found (and the parts' times)."""
    import train
    model, objective, optimizer, monitor, batch, note = training_setup(args, device, tmp, batch_size)
    step = lambda: training_step(args, model, objective, optimizer, monitor, batch)
    with FlopCounter() as counter:  # eager: hooks do not run inside compiled code (the FLOPs are the same)
        logits = step()
    if args.compile:
        train.compile_step(model, objective)
    for _ in range(3):  # warm-up: the heap of a training process stops growing after a few steps; compiling
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, beside = [], []
    for _ in range(args.repeat):
        times.append(timed(step, device)[1])
        beside.append(ceiling(args, device, 3)["gflops"])
    monitor.check()
    t = statistics.median(times)
    layout = "channels_last" if model.e_conv2.weight.is_contiguous(memory_format=torch.channels_last) else "NCHW"
    return {"batch": batch_size, "size": tuple(batch[0].shape[-2:]), "layout": layout, "seconds": t,
            "seconds_all": times, "images_per_s": batch_size / t, "gflop_forward": counter.forward / 1e9,
            "gflop_backward": counter.backward / 1e9, "gflop": (counter.forward + counter.backward) / 1e9,
            "gflops": (counter.forward + counter.backward) / t / 1e9, "faces_found": int((logits != 0).any(1).sum()),
            "parts": training_step_in_parts(args, device, model, objective, optimizer, batch) if parts else {},
            "weights": note, "ceiling_beside": statistics.median(beside)}


def part_train(args, device, tmp):
    return train_figures(args, device, tmp, 2, parts=True)


def out_of_memory(error):
    """Whether `error` is the device running out of memory, also where it arrives wrapped: under torch.compile as
    BackendCompilerFailed (or another error) whose cause is torch.OutOfMemoryError, or as a cuDNN or cuBLAS
    RuntimeError whose message says so (CUDNN_STATUS_ALLOC_FAILED, CUBLAS_STATUS_ALLOC_FAILED)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).lower()
        if isinstance(error, torch.OutOfMemoryError) or isinstance(error, RuntimeError) and (
                "out of memory" in text or "alloc_failed" in text):
            return True
        error = error.__cause__ or error.__context__
    return False


def part_train_batch(args, device, tmp, batch_size):
    """The training step at `batch_size` (--full)."""
    return train_figures(args, device, tmp, batch_size)


def part_train_largest(args, device, tmp, batch_size=4):
    """The training step at the largest batch that fits: batch_size, twice that, ... until one runs out of the GPU's
    memory."""
    if device.type != "cuda":
        return {"skipped": "on CUDA only (a CPU's memory holds batches far beyond useful ones)"}
    best, last = None, batch_size * 2 if args.quick else 1024
    while batch_size <= last:
        try:
            best = train_figures(args, device, tmp, batch_size)
        except Exception as e:
            if not out_of_memory(e):
                raise
            break
        finally:
            torch.cuda.empty_cache()
        batch_size *= 2
    return best or {"skipped": f"batch {batch_size} does not fit (the largest that fits is below it)"}


def part_eval_py(args, device, tmp):
    import eval as eval_script
    from utils.face_database import load_encodings
    count = 32 if args.quick else 2048 if device.type == "cuda" else 256
    retinaface, facenet_path, note = face_weights(args, tmp)
    data = Path(tmp) / "dataset" / "LFW"
    photos = face_photos(args, tmp)
    for p in photos:  # the database: every face photo, LFW layout
        write_image(read_image(str(p)), str(data / "normal" / p.parent.name / p.name))
    for k in range(count):  # the images to identify: the photos again and again, under new names
        p = photos[k % len(photos)]
        write_image(read_image(str(p)), str(data / "SOTAs" / "Ours" / p.parent.name / f"{p.parent.name}_{k:04d}.jpg"))
    common = ["--facenet_checkpoint", facenet_path, "--retinaface_checkpoint", retinaface,
              "--database_root", os.path.join(tmp, "database"), "--encoding_root", os.path.join(tmp, "encoding")]
    with quiet():  # the face database is built beforehand, as a real evaluation finds it after its first run
        load_encodings(str(data / "normal"), os.path.join(tmp, "database", "LFW"), os.path.join(tmp, "encoding"),
                       "LFW", load_retinaface(retinaface, device), load_facenet(facenet_path, device=device), device)
        argv = ["--dataset_name", "LFW", "--dataset_root", os.path.join(tmp, "dataset"), "--method_name", "Ours",
                "--device", str(device), "--log_path", os.path.join(tmp, "eval.txt"), *common]
        code, t = timed(lambda: eval_script.main(argv), device)
    assert code == 0
    return {"images": count, "seconds": t, "images_per_s": count / t, "batch_size": 16, "weights": note}


def part_precision(args, device, tmp, count=8):
    """Pixels (levels of 255) of the enhancement network in each precision on `device` against the CPU's float32."""
    size = 128 if args.quick else 384
    model = enhancement_model("cpu")
    weights = "random weights"
    if os.path.isfile(args.enhance_checkpoint):
        model, weights = nets.load("enhance", args.enhance_checkpoint, "cpu"), args.enhance_checkpoint
    rng = np.random.default_rng(0)
    x = torch.stack([to_tensor(random_image(rng, size, size)) for _ in range(count)])
    reference = uint8_images(enhance(model, x)).int()
    model.to(device)
    out = {"enhance_weights": weights, "images": count, "size": f"{size}x{size}"}
    for precision in PRECISIONS:
        set_precision(precision)
        with runtime_autocast(device, precision):
            got = uint8_images(enhance(model, x.to(device)).float()).cpu().int()
        diff = (got - reference).abs().float()
        out[precision] = {"max_levels": diff.max().item(), "mean_levels": diff.mean().item()}
    set_precision(args.precision)
    return out

def part_loader(args, device, tmp, batch_size=8):
    """Part 9: train.py's loader alone, with its default workers: items/s over a second pass (the workers started)."""
    import train
    from PIL import Image
    from torch.utils.data import DataLoader
    from utils.data import TrainSet, collate_training, training_batch
    from utils.face_database import identity_of
    count, size, crop = (16, 128, 64) if args.quick else (256, 512, 384)
    root, rng = Path(tmp) / "LaPa-Face", np.random.default_rng(0)
    for i in range(count):
        name = f"person{i % 16:02d}_{i:04d}"
        write_image(random_image(rng, size, size), str(root / "underexposed" / f"{name}.jpg"))
        (root / "seg").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 11, (size, size), dtype=np.uint8)).save(root / "seg" / f"{name}.png")
        if i < 16:
            for side in ("high", "low"):
                write_image(random_image(rng, size, size), str(Path(tmp) / "Contrast" / side / f"{name}.jpg"))
    files = list_images(str(root / "underexposed"))[0]
    train_set = TrainSet(str(root), sorted({identity_of(f) for f in files}), crop, str(Path(tmp) / "Contrast/high"),
                         str(Path(tmp) / "Contrast/low"))
    workers = train.parse_args([]).num_workers
    loader = DataLoader(train_set, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, drop_last=True, collate_fn=collate_training)
    for _ in loader:  # the workers start
        pass
    start = time.perf_counter()
    items = sum(len(training_batch(batch, crop, device)[2]) for batch in loader)  # resized on the device, as train.py
    synchronize(device)
    t = time.perf_counter() - start
    item_bytes = sum(x.nbytes if isinstance(x, torch.Tensor) else 8 for x in train_set[0])
    return {"items": items, "image_size": f"{size}x{size}", "crop_size": crop, "workers": workers, "seconds": t,
            "items_per_s": items / t, "items_per_s_per_worker": items / t / max(1, workers),
            "bytes_per_item": item_bytes}


def part_bf16_peak(args, device, tmp):
    """The GPU's bf16 peak: its data sheet's (BF16_PEAK_TFLOPS) and a bf16 matrix product of 8192^2 timed here."""
    if device.type != "cuda":
        return {"skipped": "on CUDA only"}
    n = 1024 if args.quick else 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    t = median_seconds(lambda: a @ b, device, max(args.repeat, 20))
    name = torch.cuda.get_device_name(device)
    sheet = next((peak for part, peak in BF16_PEAK_TFLOPS if part in name), None)
    return {"gpu": name, "matmul_size": n, "matmul_tflops": 2 * n ** 3 / t / 1e12, "sheet_tflops": sheet}

# -----------------------------------------------------------------------------
# one process per part


def cpu_seconds():
    """(busy CPU seconds of the whole machine since boot, of this process and its children); Linux."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), sum(r.ru_utime + r.ru_stime for r in own)


def run_part(name, args):
    """Runs in a fresh process: the part's figures, its peak memory, or the error that stopped it, and the share
    of the machine's CPUs that other processes used meanwhile (a disturbed measurement shows)."""
    keep_freed_memory()
    device = resolve_device(args.device)
    function, *extra = all_parts(args)[name]
    if isinstance(extra[0] if extra else None, dict):  # --full's settings of this part
        args = argparse.Namespace(**{**vars(args), **extra.pop(0)})
        result_settings = {"precision": args.precision, "compile": args.compile}
    else:
        result_settings = {}
    set_precision(args.precision)
    machine_start, own_start, start = *cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = function(args, device, tmp, *extra)
        except (Exception, SystemExit) as e:  # reported in the table, the other parts go on
            result = {"error": f"{type(e).__name__}: {e}"}
    machine_end, own_end = cpu_seconds()
    others = (machine_end - machine_start) - (own_end - own_start)
    result.update(result_settings)
    result["others_cpu_share"] = max(0.0, others / ((time.perf_counter() - start) * os.cpu_count()))
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                                    else 1024) / 2 ** 30
    if device.type == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


PARTS = {"model": (part_model,), "ceiling": (part_ceiling,), "enhance": (part_enhance,), "test_py": (part_test_py,),
         "large_4096x4096": (part_large, 4096, 4096), "large_6000x4000": (part_large, 4000, 6000),
         "train": (part_train,), "train_largest": (part_train_largest,), "eval_py": (part_eval_py,),
         "precision": (part_precision,), "loader": (part_loader,), "bf16_peak": (part_bf16_peak,)}


def full_parts(args):
    """--full's training steps: {name: (function, settings, batch size)} for each precision, eager and compiled, at
    FULL_BATCHES and the largest batch that fits (from twice the last of them on; quick: batches 1 and 2)."""
    batches = (1, 2) if args.quick else FULL_BATCHES
    parts = {}
    for precision in PRECISIONS:
        for compiled in (False, True):
            settings = {"precision": precision, "compile": compiled}
            kind = f"train {precision} {'compiled' if compiled else 'eager'}"
            for batch_size in batches:
                parts[f"{kind} batch {batch_size}"] = (part_train_batch, settings, batch_size)
            parts[f"{kind} largest"] = (part_train_largest, settings, 2 * batches[-1])
    return parts


def all_parts(args):
    """The parts this run measures, in order: --parts, or with --full every part and full_parts."""
    if args.full:  # the largest batch of each setting is among full_parts
        return {**{n: spec for n, spec in PARTS.items() if n != "train_largest"}, **full_parts(args)}
    wanted = args.parts.split(",")
    return {n: spec for n, spec in PARTS.items() if n in wanted or (n.startswith("large") and "large" in wanted)}


def run_isolated(name, args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(run_part, name, args).result()
        except BrokenProcessPool as e:  # killed (out of memory, say)
            return {"error": f"the process died: {e}"}

# -----------------------------------------------------------------------------
# report


def machine(device):
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    out = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def bf16_peak_tflops(results):
    """The GPU's dense bf16 peak of the bf16_peak part: its data sheet's, else the matmul timed; None without it."""
    r = results.get("bf16_peak", {})
    return r.get("sheet_tflops") or r.get("matmul_tflops")


def table(results):
    """Rows (part, figure, value, note) of the results with their derived ratios (added to `results` too)."""
    rows = []
    def of_ceiling(r):  # against the higher of part 1's ceiling and the one timed beside the part: never inflated
        top = max(r.get("ceiling_beside", 0), results.get("ceiling", {}).get("gflops", 0))
        return r["gflops"] / top if top else None
    share = lambda ratio: f"{ratio:.2f} of the ceiling" if ratio else ""
    for name, r in results.items():
        if "error" in r:
            rows.append((name, "error", r["error"][:100], ""))
            continue
        if "skipped" in r:
            rows.append((name, "skipped", "", r["skipped"]))
            continue
        memory = f"{r['peak_rss_gib']:.2f} GiB peak RSS" + (f", {r['peak_cuda_gib']:.2f} GiB CUDA" if "peak_cuda_gib" in r else "")
        if name == "model":
            flops = ", ".join(f"{v:.1f} GFLOP at {k[6:]}" for k, v in r.items() if k.startswith("gflop_"))
            rows.append((name, "enhancement network", f"{r['parameters']:,} parameters", f"{flops} (one forward, "
                         "2 x multiply-adds of its convolutions)"))
        elif name == "ceiling":
            rows.append((name, f"conv 128->128 3x3 at {r['size']}x{r['size']}", f"{r['gflops']:.1f} GFLOP/s",
                         f"{r['seconds'] * 1e3:.1f} ms for {r['gflop']:.1f} GFLOP"))
        elif name == "enhance":
            for size, s in r.items():
                if isinstance(s, dict):
                    s["of_ceiling"] = of_ceiling(s)
                    rows.append((name, f"network alone, {size}", f"{s['seconds']:.3f} s", f"{s['gflops']:.1f} GFLOP/s, "
                                 + share(s["of_ceiling"])))
        elif name == "test_py":
            line = f"{r['images']} JPEGs of {r['size']}, {r['seconds']:.1f} s; {memory}"
            line = f"{r['of_network_alone']:.2f} of the network alone (timed beside each run); " + line
            rows.append((name, f"test.main end to end, batches of {r['batch']}", f"{r['images_per_s']:.2f} images/s",
                         line))
        elif name.startswith("large"):
            r["of_ceiling"] = of_ceiling(r)
            rows.append((name, f"{r['size']}, tiles of {r['tile']}", f"{r['seconds']:.1f} s",
                         f"{memory}; {r['gflops']:.1f} GFLOP/s, {share(r['of_ceiling'])}"))
        elif name.startswith("train"):
            r["efficiency"] = of_ceiling(r)
            largest = " (the largest that fits)" if name.endswith("largest") else ""
            peak = bf16_peak_tflops(results)
            if peak:
                r["of_bf16_peak"] = r["gflops"] / 1e3 / peak
            rows.append((name, f"step, batch {r['batch']}{largest}, {r['size'][0]}x{r['size'][1]}, {r['layout']}",
                         f"{r['seconds']:.3f} s", f"{r['seconds'] / r['batch'] * 1e3:.2f} ms per image"
                         + (f", {r['of_bf16_peak']:.3f} of the bf16 peak" if peak else "")
                         + f"; {r['images_per_s']:.2f} images/s; {r['gflop'] / 1e3:.3f} TFLOP "
                         f"({r['gflop_forward'] / 1e3:.3f} forward), {r['gflops']:.1f} GFLOP/s, efficiency "
                         f"{share(r['efficiency'])}; {memory}; faces found {r['faces_found']}/{r['batch']}"))
            for part, t in r["parts"].items():
                rows.append(("", f"  {part}", f"{t:.3f} s", ""))
            if r["parts"]:
                parts_sum = sum(t for k, t in r["parts"].items() if not k.startswith("of "))
                rows.append(("", "  sum of the parts", f"{parts_sum:.2f} s", ""))
        elif name == "eval_py":
            rows.append((name, "eval.main, recognition", f"{r['images_per_s']:.2f} images/s",
                         f"{r['images']} images, {r['seconds']:.1f} s, detection in batches of {r['batch_size']}; {memory}"))
        elif name == "loader":
            rows.append((name, f"train.py's loader, {r['workers']} workers", f"{r['items_per_s']:.1f} items/s",
                         f"{r['items_per_s_per_worker']:.1f} per worker; {r['items']} items of {r['image_size']} "
                         f"JPEGs to {r['crop_size']}x{r['crop_size']}, {r['bytes_per_item'] / 2 ** 20:.2f} MiB each"))
        elif name == "bf16_peak":
            sheet = f"data sheet {r['sheet_tflops']} TFLOP/s" if r["sheet_tflops"] else "not in BF16_PEAK_TFLOPS"
            rows.append((name, f"{r['gpu']}: bf16 matmul {r['matmul_size']}^2", f"{r['matmul_tflops']:.0f} TFLOP/s",
                         f"{sheet}; training's fractions are of the {'sheet' if r['sheet_tflops'] else 'matmul'}"))
        elif name == "precision":
            for precision in PRECISIONS:
                d = r[precision]
                rows.append((name, f"{precision} against the CPU's float32", f"{d['max_levels']:.0f} levels max",
                             f"mean {d['mean_levels']:.3f} levels of 255; {r['images']} images of {r['size']}, "
                             f"{r['enhance_weights']}"))
    return rows


def main(argv=None):
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.full and device.type != "cuda" and not args.quick:
        sys.exit(f"error: --full measures a GPU's table (training steps up to batch 64 and beyond, compiled), hours "
                 f"on {device}; run the default parts there (or --full --quick, a smoke run)")
    if args.test_batch is None:
        args.test_batch = 16 if device.type == "cuda" else 1
    results = {}
    for name in all_parts(args):
        print(f"running {name} ...", flush=True)
        results[name] = run_isolated(name, args)
    rows = table(results)
    widths = [max(len(str(row[k])) for row in rows) for k in range(3)]
    print(f"\nLow-FaceNet benchmark on {device} ({machine(device)})" + (" -- quick: not meaningful" if args.quick else ""))
    print(f"flags: precision={args.precision}, compile={args.compile} (inference, VGG and the detector compute in "
          "channels_last; the enhancement network trains in the layout timed faster at the start, as train.py does)")
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    notes = sorted({r["weights"] for r in results.values() if r.get("weights")})
    for note in notes:
        print(f"weights (speed does not depend on their values): {note}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(device), "args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
