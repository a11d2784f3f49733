"""Train the Low-FaceNet enhancement network with its four helper modules (SPEC section 3).

    python train.py                                  # published defaults: LaPa-Face, batch 2, 384x384, 100 epochs
    python train.py --batch_size 8 --device cuda --num_workers 8
    python train.py --resume                         # continue from checkpoint/LLE/resume.pth
    python train.py --val_dataset LaPa-Test          # validate after every epoch, keep checkpoint/LLE/best.pth
    tensorboard --logdir log/tensorboard             # watch it: losses, learning rate, images/s, validation, previews
    torchrun --standalone --nproc_per_node 4 train.py --batch_size 2          # 4 GPUs (or CPU processes), global batch 8
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py   # 2 machines

Under torchrun every process trains on its share of each global batch (DistributedDataParallel; NCCL on CUDA,
gloo on the CPU); the losses are computed over the whole global batch, so N processes x --batch_size b step
exactly like one process with batch N*b. Rank 0 alone builds the face database and writes logs and checkpoints.

Writes checkpoint/LLE/epoch{N}.pth (a bare state dict that test.py loads) after every epoch, and
checkpoint/LLE/resume.pth (model, optimizer, epoch, iteration, RNG state) every --save_every iterations
and at each epoch end, both atomically. SIGINT/SIGTERM save a resume point and stop cleanly; after a hard kill,
--resume continues from the last resume point and (same device, --deterministic) reaches the same weights.
Every training file is decoded once before training starts (a file that stops being readable later is named in a
line and skipped); a NaN/Inf loss term or gradient stops training with a line naming it before any weight is
changed. Errors end in one line, also appended to the log.

Beside the log (--log_path, default log/train.txt) go run.json (arguments, start time, git commit, versions,
device), tensorboard/ (every loss term, learning rate, images/s, validation measures, previews) and, with
--val_dataset, previews/epoch{N}.png (input | enhanced | normal); checkpoint/LLE/best.pth holds the weights of the
best validation (--best_metric, face accuracy by default, ties by PSNR). Rank 0 alone validates and writes them.
"""
import argparse
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import nets
from nets.enhance import EnhanceNet, init_weights, training_layout
from nets.face_recognition import FaceRecognitionLoss
from nets.facenet import load_facenet
from nets.losses import LowFaceNetObjective
from nets.retinaface import load_retinaface
from nets.vgg import load_vgg16
from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint
from utils import distributed
from utils.data import TrainingDataGone, TrainSet
from utils.face_database import load_encodings
from utils.images import write_image
from utils.metrics import brightness
from utils.monitor import Board, progress, write_run_record
from utils.runtime import keep_freed_memory, seed_everything
from utils.validation import BEST_METRICS, BestCheckpoint, Validation


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
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA; also accepted on the CPU); the "
                   "ratio losses, the smoothness weights and the cosine similarities stay in float32")
    p.add_argument("--memory_format", default="auto", choices=["auto", "channels_last", "contiguous"],
                   help="layout of the enhancement network in training; auto: the faster one on this device, timed "
                   "at the start (contiguous, the published one, with --deterministic); results do not depend on it")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels only (bit-reproducible runs "
                   "and resumes on one device; slower on CUDA)")
    p.add_argument("--val_dataset", default=None, help="validate on DATASET_ROOT/NAME/{underexposed,normal} every "
                   "--val_every epochs: PSNR, SSIM, brightness, face accuracy; best.pth and preview pictures")
    p.add_argument("--val_every", type=int, default=1, help="epochs between validations")
    p.add_argument("--best_metric", default="face_acc", choices=BEST_METRICS, help="the validation measure that "
                   "chooses CHECKPOINT_ROOT/best.pth (ties by PSNR)")
    p.add_argument("--preview_images", type=int, default=4, help="validation images in each preview picture, "
                   "LOG_FOLDER/previews/epoch{N}.png (rows input | enhanced | normal)")
    return p.parse_args(argv)


class Log:
    """Prints a line and appends it to the log file (on the main process only)."""

    def __init__(self, path, main=True):
        self.path, self.main = path, main
        if main:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def __call__(self, line):
        if self.main:
            tqdm.write(line, file=sys.stdout)  # above the progress bar, when there is one
            sys.stdout.flush()
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def fail(self, message):
        """Appends 'error: message' to the log file and exits with it (status 1)."""
        if self.main:
            with open(self.path, "a") as f:
                f.write(f"error: {message}\n")
        sys.exit(f"error: {message}")


class NonFiniteStep(ArithmeticError):
    """A loss term or the gradient norm stopped being finite; the weights were not changed."""


def train_step(model, objective, optimizer, batch, amp=False):
    """One step of the published recipe on batch = (low, seg, labels, positives, negatives): forward (bf16 autocast
    with `amp`), backward, gradient norm clipped to 0.1, Adam. Returns (enhanced, total, terms, face_logits).
    Raises NonFiniteStep, before the weights change, when a loss term or the gradient norm is NaN or infinite."""
    low, seg, labels, pos, neg = batch
    with torch.autocast(low.device.type, dtype=torch.bfloat16, enabled=amp):
        enhanced, illumination = model(low)
        total, terms, logits = objective(enhanced, illumination, low, pos, neg, seg, labels)
    values = {**terms, "total": total.detach()}
    bad = next((k for k, v in values.items() if not torch.isfinite(v)), None)
    if bad:
        raise NonFiniteStep(f"loss term {bad} became {values[bad].item()}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    if not torch.isfinite(grad_norm):
        raise NonFiniteStep(f"the gradient norm became {grad_norm.item()}")
    optimizer.step()
    return enhanced, total, terms, logits


def leave_signals_to_main(_):
    """DataLoader workers ignore Ctrl-C and SIGTERM (a scheduler signals every process of a job): the main process
    saves a resume point and then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    seed_everything(args.seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
    rank, world, device = distributed.setup(
        f"cuda:{args.gpu_id}" if args.gpu_id is not None and args.device == "auto" else args.device)
    log = Log(args.log_path, main=rank == 0)
    stop = {"signal": None}
    handlers = {sig: signal.signal(sig, lambda s, _: stop.update(signal=s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(args, log, stop, rank, world, device)
    except TrainingDataGone as e:  # raised in a loader worker, its message ends with the worker's traceback
        log.fail(str(e).strip().splitlines()[-1].removeprefix(f"{TrainingDataGone.__module__}.TrainingDataGone: "))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.use_deterministic_algorithms(deterministic)
        distributed.cleanup()


def train(args, log, stop, rank, world, device):
    main_process = rank == 0

    # ---- face database, data ----
    data_dir = os.path.join(args.dataset_root, args.dataset_name)
    for folder in [os.path.join(data_dir, sub) for sub in ("underexposed", "normal", "seg")] + \
            [args.contrast_positive_path, args.contrast_negative_path]:
        if not os.path.isdir(folder):
            log.fail(f"{folder}: folder not found")
    validation = check_validation_set(args, log, main_process)
    try:
        detector = load_retinaface(args.retinaface_checkpoint, device)
        facenet = load_facenet(args.facenet_checkpoint, args.backbone, device)
        for turn in (True, False):  # rank 0 builds the database and encodings; the others then read the cache
            if main_process == turn:
                encodings, names = load_encodings(
                    os.path.join(data_dir, "normal"), os.path.join(args.database_root, args.dataset_name),
                    args.encoding_root, args.dataset_name, detector, facenet, args.facenet_checkpoint, device)
                train_set = TrainSet(data_dir, names, args.crop_size, args.contrast_positive_path,
                                     args.contrast_negative_path, args.seed)
                unreadable = train_set.unreadable() if main_process else []
            distributed.barrier()
        if validation and main_process:  # rank 0 alone validates
            validation.load_face_database(args.database_root, args.encoding_root, detector, facenet,
                                          args.facenet_checkpoint, device)
        vgg = load_vgg16(args.vgg_checkpoint, device)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        log.fail(str(e))
    train_set.report = log if main_process else print  # a file that stops being readable later: a line, skipped
    for line in unreadable:
        log(f"unreadable {line}")
    if unreadable:
        log.fail(f"{len(unreadable)} training files cannot be read (listed above); fix or remove them")
    objective = LowFaceNetObjective(vgg, FaceRecognitionLoss(detector, facenet, encodings)).to(device)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    iters_per_epoch = len(sampler) // args.batch_size
    if iters_per_epoch == 0:
        log.fail(f"{data_dir}: {len(train_set)} images, fewer than one batch of {args.batch_size} per process")

    # ---- model, optimizer, resume ----
    model = init_weights(EnhanceNet()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    resume_path = os.path.join(args.checkpoint_root, "resume.pth")
    epoch, start_batch = args.start_epoch, 0
    best = BestCheckpoint(os.path.join(args.checkpoint_root, "best.pth"), args.best_metric, args.val_dataset)
    if args.resume:
        path = args.resume_checkpoint or resume_path
        try:
            state = read_checkpoint(path)
            if isinstance(state, dict) and "optimizer" in state:
                written = (state["images"], state["args"]["batch_size"], state["args"]["seed"], state["world"])
                if written != (len(train_set), args.batch_size, args.seed, world):  # they fix the data order
                    log.fail(f"{path}: written for (images, batch_size, seed, processes) = {written}, this run has "
                             f"{(len(train_set), args.batch_size, args.seed, world)}; resume with the same data and settings")
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                epoch, start_batch = state["epoch"], state["batch"]
                restore_rng(state["rng"])
                best.load_state_dict(state.get("best"))
            else:
                model = nets.load("enhance", path, device).train()
                optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        except CheckpointError as e:
            log.fail(f"cannot resume: {e}")
        except (KeyError, RuntimeError) as e:
            log.fail(f"{path}: cannot resume ({type(e).__name__}: {str(e).splitlines()[0]})")
        log(f"resumed from {path} at epoch {epoch}, iteration {start_batch}")
        if validation:
            log(f"best so far: {best.describe()}")
    layout = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}.get(args.memory_format)
    if layout is None:  # every rank must hold the same layout: channels_last if any rank timed it faster
        timed_faster = not args.deterministic and training_layout(device, args.amp) == torch.channels_last
        layout = torch.channels_last if distributed.any_rank(timed_faster) else torch.contiguous_format
    model.to(memory_format=layout)
    processes = f" per process x {world} processes" if world > 1 else ""
    log(f"training on {device}: {len(train_set)} images, {len(names)} identities, batch {args.batch_size}{processes}, "
        f"{iters_per_epoch} iterations per epoch, epochs {epoch}..{args.epoch_num - 1}, "
        f"{str(layout).removeprefix('torch.')}")
    log_dir = os.path.dirname(os.path.abspath(args.log_path))
    board = Board(os.path.join(log_dir, "tensorboard"), main_process,
                  purge_step=epoch * iters_per_epoch + start_batch + 1)  # the first step this run writes
    if main_process:
        write_run_record(os.path.join(log_dir, "run.json"), args, device, world)

    net = model  # the bare network, whose state dict the checkpoints hold
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def weights():  # NCHW tensors, as the published checkpoints hold, whatever the training layout
        return {k: v.contiguous() for k, v in net.state_dict().items()}

    def save_resume(epoch, batch):
        if not main_process:
            return
        atomic_save({"model": weights(), "optimizer": optimizer.state_dict(), "epoch": epoch, "batch": batch,
                     "images": len(train_set), "world": world, "rng": rng_state(), "args": vars(args),
                     "best": best.state_dict()}, resume_path)

    def last_good():
        return f"last resume point: {resume_path}" if os.path.exists(resume_path) else "no resume point written yet"

    def validate(epoch):  # on rank 0, the weights after `epoch`; the training state stays exactly as it was
        if main_process:
            rng = rng_state()
            measures, preview = validation(net, device, args.amp, args.preview_images, report=log)
            restore_rng(rng)
            best.update(epoch, measures, weights)
            step = (epoch + 1) * iters_per_epoch
            board.scalars(step, {k: v for k, v in measures.items() if k != "images"}, "val")
            if preview is not None:
                write_image(preview, os.path.join(log_dir, "previews", f"epoch{epoch}.png"))
                board.image("val/preview", preview, step)
            board.flush()
            log(f"validation epoch {epoch} on {args.val_dataset} ({measures['images']} images): "
                + " ".join(f"{k} {measures[k]:.4f}" for k in ("psnr", "ssim", "brightness", "face_acc"))
                + f" ({measures['no_face']} without a detected face) | best: {best.describe()}")
        distributed.barrier()

    # ---- training loop ----
    done = 0
    model.train()
    while epoch < args.epoch_num:
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)[start_batch * args.batch_size:]  # resumable mid-epoch
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=order, num_workers=args.num_workers,
                            drop_last=True, pin_memory=device.type == "cuda", worker_init_fn=leave_signals_to_main)
        correct = seen = 0
        sums, tic = {}, time.time()
        bar = progress(iters_per_epoch * args.batch_size * world, start_batch * args.batch_size * world, epoch,
                       main_process)
        for it, (low, seg, labels, pos, neg) in enumerate(loader, start=start_batch):
            low, seg, labels, pos, neg = (t.to(device, non_blocking=True) for t in (low, seg, labels, pos, neg))
            try:
                enhanced, total, terms, logits = train_step(model, objective, optimizer, (low, seg, labels, pos, neg),
                                                            args.amp)
            except NonFiniteStep as e:
                log.fail(f"{e} at epoch {epoch} iteration {it + 1}; stopped before writing these weights ({last_good()})")

            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            for k, v in {"loss": total.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            done += 1
            bar.update(len(labels) * world)
            if (it + 1) % args.log_every == 0:
                mean_brightness = brightness(enhanced.detach()).item()
                n = min(args.log_every, it + 1 - start_batch)
                means = " ".join(f"{k} {v / n:.4f}" for k, v in sums.items() if k != "loss")
                seconds = time.time() - tic
                log(f"epoch {epoch} iter {it + 1}/{iters_per_epoch} loss {sums['loss'] / n:.4f} "
                    f"face_acc {correct / seen:.4f} brightness {mean_brightness:.4f} | {means} | "
                    f"{seconds / n:.2f} s/it")
                board.scalars(epoch * iters_per_epoch + it + 1, {
                    **{k: v / n for k, v in sums.items()}, "face_acc": correct / seen, "brightness": mean_brightness,
                    "lr": optimizer.param_groups[0]["lr"], "images_per_s": n * args.batch_size * world / seconds},
                    "train")
                sums, tic = {}, time.time()
            finished_epoch = it + 1 == iters_per_epoch
            stopping = distributed.any_rank(bool(stop["signal"])) or (args.max_iters and done >= args.max_iters)
            if stopping or (not finished_epoch and (it + 1) % args.save_every == 0):
                save_resume(epoch, it + 1)
            if stopping:
                bar.close()
                board.close()
                log(f"stopped at epoch {epoch} iteration {it + 1}; continue with --resume ({resume_path})")
                return
        bar.close()
        if main_process:
            atomic_save(weights(), os.path.join(args.checkpoint_root, f"epoch{epoch}.pth"))
        if validation and (epoch + 1) % args.val_every == 0:
            validate(epoch)
        epoch, start_batch = epoch + 1, 0
        save_resume(epoch, 0)
        log(f"epoch {epoch - 1} done: wrote {os.path.join(args.checkpoint_root, f'epoch{epoch - 1}.pth')}")
    board.close()


def check_validation_set(args, log, main_process):
    """The Validation of --val_dataset (None without one), checked before anything else is done: a missing or empty
    folder, an image without its normal-light image or one that cannot be read ends the run with one line."""
    if not args.val_dataset:
        return None
    if args.val_every < 1 or args.preview_images < 0:
        log.fail(f"--val_every must be at least 1 and --preview_images at least 0 (got {args.val_every} and "
                 f"{args.preview_images})")
    try:
        validation = Validation(os.path.join(args.dataset_root, args.val_dataset), args.batch_size, args.num_workers)
    except ValueError as e:
        log.fail(str(e))
    problems = validation.problems() if main_process else []
    for line in problems:
        log(f"validation image {line}")
    if problems:
        log.fail(problems[0] if len(problems) == 1 else
                 f"{len(problems)} validation images cannot be used (listed above); fix or remove them")
    return validation


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
