"""Train the Low-FaceNet enhancement network with its four helper modules (SPEC section 3).

    python train.py                                  # published defaults: LaPa-Face, batch 2, 384x384, 100 epochs
    python train.py --batch_size 8 --device cuda --num_workers 8
    python train.py --resume                         # continue from checkpoint/LLE/resume.pth

Writes checkpoint/LLE/epoch{N}.pth (a bare state dict that test.py loads) after every epoch, and
checkpoint/LLE/resume.pth (model, optimizer, epoch, iteration, RNG state) every --save_every iterations
and at each epoch end, both atomically. SIGINT/SIGTERM save a resume point and stop cleanly; after a hard kill,
--resume continues from the last resume point and (same device, --deterministic) reaches the same weights.
Every training file is decoded once before training starts; a NaN/Inf loss term or gradient stops training
with a line naming it before any weight is changed. Errors end in one line, also appended to the log.
"""
import argparse
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

import nets
from nets.enhance import EnhanceNet, init_weights
from nets.face_recognition import FaceRecognitionLoss
from nets.facenet import load_facenet
from nets.losses import LowFaceNetObjective
from nets.retinaface import load_retinaface
from nets.vgg import load_vgg16
from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint
from utils.data import TrainSet, epoch_order
from utils.face_database import load_encodings
from utils.runtime import resolve_device, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train the Low-FaceNet enhancement network")
    # published flags
    p.add_argument("--gpu_id", default=None, help="published flag; same as --device cuda:ID")
    p.add_argument("--start_epoch", type=int, default=0, help="first epoch when resuming from a bare epochN.pth")
    p.add_argument("--epoch_num", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--crop_size", type=int, default=384, help="training images are resized to crop_size x crop_size")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--dataset_name", default="LaPa-Face")
    p.add_argument("--contrast_positive_path", default="dataset/Contrast/high")
    p.add_argument("--contrast_negative_path", default="dataset/Contrast/low")
    p.add_argument("--checkpoint_root", default="checkpoint/LLE/")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--resume_checkpoint", default=None, help="resume.pth (full state) or epochN.pth (weights); "
                   "default: CHECKPOINT_ROOT/resume.pth")
    p.add_argument("--log_path", default="log/train.txt")
    # this project's additions
    p.add_argument("--dataset_root", default="dataset")
    p.add_argument("--database_root", default="database")
    p.add_argument("--encoding_root", default="encoding")
    p.add_argument("--facenet_checkpoint", default="checkpoint/facenet_mobilenet.pth")
    p.add_argument("--backbone", default="mobilenet", choices=["mobilenet", "inception_resnetv1"])
    p.add_argument("--retinaface_checkpoint", default="checkpoint/Retinaface_mobilenet0.25.pth")
    p.add_argument("--vgg_checkpoint", default=None, help="local torchvision vgg16 file (default: torchvision's "
                   "ImageNet weights through its cache under TORCH_HOME)")
    p.add_argument("--device", default="auto")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log_every", type=int, default=10, help="iterations between log lines")
    p.add_argument("--save_every", type=int, default=500, help="iterations between resume points")
    p.add_argument("--max_iters", type=int, default=None, help="stop after this many iterations in all (tests, trials)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels only (bit-reproducible runs "
                   "and resumes on one device; slower on CUDA)")
    return p.parse_args(argv)


class Log:
    """Prints a line and appends it to the log file."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path

    def __call__(self, line):
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def fail(self, message):
        """Appends 'error: message' to the log file and exits with it (status 1)."""
        with open(self.path, "a") as f:
            f.write(f"error: {message}\n")
        sys.exit(f"error: {message}")


def main(argv=None):
    args = parse_args(argv)
    seed_everything(args.seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
    log = Log(args.log_path)
    stop = {"signal": None}
    handlers = {sig: signal.signal(sig, lambda s, _: stop.update(signal=s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(args, log, stop)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.use_deterministic_algorithms(deterministic)


def train(args, log, stop):
    device = resolve_device(f"cuda:{args.gpu_id}" if args.gpu_id is not None and args.device == "auto" else args.device)

    # ---- face database, data ----
    data_dir = os.path.join(args.dataset_root, args.dataset_name)
    for folder in [os.path.join(data_dir, sub) for sub in ("underexposed", "normal", "seg")] + \
            [args.contrast_positive_path, args.contrast_negative_path]:
        if not os.path.isdir(folder):
            log.fail(f"{folder}: folder not found")
    try:
        detector = load_retinaface(args.retinaface_checkpoint, device)
        facenet = load_facenet(args.facenet_checkpoint, args.backbone, device)
        encodings, names = load_encodings(os.path.join(data_dir, "normal"),
                                          os.path.join(args.database_root, args.dataset_name), args.encoding_root,
                                          args.dataset_name, detector, facenet, args.facenet_checkpoint, device)
        train_set = TrainSet(data_dir, names, args.crop_size, args.contrast_positive_path,
                             args.contrast_negative_path, args.seed)
        vgg = load_vgg16(args.vgg_checkpoint, device)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        log.fail(str(e))
    unreadable = train_set.unreadable()
    for line in unreadable:
        log(f"unreadable {line}")
    if unreadable:
        log.fail(f"{len(unreadable)} training files cannot be read (listed above); fix or remove them")
    objective = LowFaceNetObjective(vgg, FaceRecognitionLoss(detector, facenet, encodings)).to(device)
    iters_per_epoch = len(train_set) // args.batch_size
    if iters_per_epoch == 0:
        log.fail(f"{data_dir}: {len(train_set)} images, fewer than one batch of {args.batch_size}")

    # ---- model, optimizer, resume ----
    model = init_weights(EnhanceNet()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    resume_path = os.path.join(args.checkpoint_root, "resume.pth")
    epoch, start_batch = args.start_epoch, 0
    if args.resume:
        path = args.resume_checkpoint or resume_path
        try:
            state = read_checkpoint(path)
            if isinstance(state, dict) and "optimizer" in state:
                written = (state["images"], state["args"]["batch_size"], state["args"]["seed"])
                if written != (len(train_set), args.batch_size, args.seed):  # they fix the data order
                    log.fail(f"{path}: written for (images, batch_size, seed) = {written}, this run has "
                             f"{(len(train_set), args.batch_size, args.seed)}; resume with the same data and settings")
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                epoch, start_batch = state["epoch"], state["batch"]
                restore_rng(state["rng"])
            else:
                model = nets.load("enhance", path, device).train()
                optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        except CheckpointError as e:
            log.fail(f"cannot resume: {e}")
        except (KeyError, RuntimeError) as e:
            log.fail(f"{path}: cannot resume ({type(e).__name__}: {str(e).splitlines()[0]})")
        log(f"resumed from {path} at epoch {epoch}, iteration {start_batch}")
    log(f"training on {device}: {len(train_set)} images, {len(names)} identities, batch {args.batch_size}, "
        f"{iters_per_epoch} iterations per epoch, epochs {epoch}..{args.epoch_num - 1}")

    def save_resume(epoch, batch):
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "batch": batch, "images": len(train_set), "rng": rng_state(), "args": vars(args)}, resume_path)

    def last_good():
        return f"last resume point: {resume_path}" if os.path.exists(resume_path) else "no resume point written yet"

    # ---- training loop ----
    done = 0
    model.train()
    while epoch < args.epoch_num:
        train_set.set_epoch(epoch)
        order = epoch_order(len(train_set), args.batch_size, args.seed, epoch, start_batch)
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=order, num_workers=args.num_workers,
                            drop_last=True, pin_memory=device.type == "cuda")
        correct = seen = 0
        sums, tic = {}, time.time()
        for it, (low, seg, labels, pos, neg) in enumerate(loader, start=start_batch):
            low, seg, labels, pos, neg = (t.to(device, non_blocking=True) for t in (low, seg, labels, pos, neg))
            enhanced, illumination = model(low)
            total, terms, logits = objective(enhanced, illumination, low, pos, neg, seg, labels)
            values = {**terms, "total": total.detach()}
            bad = next((k for k, v in values.items() if not torch.isfinite(v)), None)
            if bad:
                log.fail(f"loss term {bad} became {values[bad].item()} at epoch {epoch} iteration {it + 1}; "
                         f"stopped before writing these weights ({last_good()})")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            if not torch.isfinite(grad_norm):
                log.fail(f"the gradient norm became {grad_norm.item()} at epoch {epoch} iteration {it + 1} with "
                         f"finite loss terms; stopped before writing these weights ({last_good()})")
            optimizer.step()

            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            for k, v in {"loss": total.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            done += 1
            if (it + 1) % args.log_every == 0:
                brightness = (enhanced.detach() * enhanced.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1).mean()
                n = min(args.log_every, it + 1 - start_batch)
                means = " ".join(f"{k} {v / n:.4f}" for k, v in sums.items() if k != "loss")
                log(f"epoch {epoch} iter {it + 1}/{iters_per_epoch} loss {sums['loss'] / n:.4f} "
                    f"face_acc {correct / seen:.4f} brightness {brightness.item():.4f} | {means} | "
                    f"{(time.time() - tic) / n:.2f} s/it")
                sums, tic = {}, time.time()
            finished_epoch = it + 1 == iters_per_epoch
            if stop["signal"] or (args.max_iters and done >= args.max_iters) or \
                    (not finished_epoch and (it + 1) % args.save_every == 0):
                save_resume(epoch, it + 1)
            if stop["signal"] or (args.max_iters and done >= args.max_iters):
                log(f"stopped at epoch {epoch} iteration {it + 1}; continue with --resume ({resume_path})")
                return
        atomic_save(model.state_dict(), os.path.join(args.checkpoint_root, f"epoch{epoch}.pth"))
        epoch, start_batch = epoch + 1, 0
        save_resume(epoch, 0)
        log(f"epoch {epoch - 1} done: wrote {os.path.join(args.checkpoint_root, f'epoch{epoch - 1}.pth')}")


def rng_state():
    """Random-number states of torch, NumPy and Python, storable with weights_only loading."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
            "python": random.getstate()}


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), *n[2:]))
    random.setstate(state["python"])


if __name__ == "__main__":
    main()
