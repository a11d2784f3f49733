"""Train the Low-FaceNet enhancement network with its four helper modules (SPEC section 3).

    python train.py                                  # published defaults: LaPa-Face, batch 2, 384x384, 100 epochs
    python train.py --batch_size 8 --device cuda --num_workers 8
    python train.py --batch_size 32 --device cuda --num_workers 8 --precision bf16 --compile   # faster on a GPU
    python train.py --resume                         # continue from checkpoint/LLE/resume.pth
    python train.py --overwrite                      # start over where an earlier run wrote (removes its files)
    python train.py --val_dataset LaPa-Test          # validate after every epoch, keep checkpoint/LLE/best.pth
    tensorboard --logdir log/tensorboard             # watch it: losses, learning rate, images/s, validation, previews
    torchrun --standalone --nproc_per_node 4 train.py --batch_size 2          # 4 GPUs (or CPU processes), global batch 8
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py   # 2 machines

Under torchrun every process trains on its share of each global batch (DistributedDataParallel; NCCL on CUDA,
gloo on the CPU); the losses are computed over the whole global batch, so N processes x --batch_size b step
exactly like one process with batch N*b. Rank 0 alone builds the face database and writes logs and checkpoints.

Writes checkpoint/LLE/epoch{N}.pth (a bare state dict that test.py loads) after every epoch, and
checkpoint/LLE/resume.pth (model, optimizer, epoch, iteration, RNG state) every --save_every iterations
and at each epoch end, both atomically. An earlier run's files are never replaced silently: without --resume, a
--checkpoint_root holding resume.pth, best.pth or epochN.pth, or a log folder holding tensorboard/ events or
previews/, stops the run in one line; --overwrite starts over (removes those files once set-up has succeeded), or
name another --checkpoint_root and --log_path. --resume refuses other training files (names and sizes), another
--crop_size, --batch_size, --seed or number of processes; other changed settings (--lr, --weight_decay, ...) are
applied and named in the log. Ctrl-C or SIGTERM during set-up ends the run at once, writing nothing; during
training the run saves a resume point after the current step and stops (a second signal stops it at once); either
way one line says so and the exit status is 130 (SIGINT) or 143 (SIGTERM), so that `train.py && next` stops.
After a hard kill, --resume continues from the last resume point and (same device, --deterministic) reaches the
same weights.
Every training file is decoded once before training starts (a file that stops being readable later is named in a
line and skipped). A NaN/Inf loss term or gradient stops training with a line naming it, and no weight is changed by
that step or any after it: the check runs on the device and the host reads it once per log line and before every
checkpoint (a step waits for the device only for the face detections). Errors end in one line, also appended to
the log (a full disk while writing a checkpoint included; no partial file is left).

Beside the log (--log_path, default log/train.txt) go run.json (arguments, start time, git commit, versions,
device), tensorboard/ (every loss term, learning rate, images/s, validation measures, previews) and, with
--val_dataset, previews/epoch{N}.png (input | enhanced | normal); checkpoint/LLE/best.pth holds the weights of the
best validation (--best_metric, face accuracy by default, ties by PSNR). Rank 0 alone validates and writes them.
"""
import hashlib
import os
import random
import re
import signal
import sys
import time

from utils.checks import (ArgumentParser, add_precision_flags, check_checkpoints, check_paths, device_name,
                          escape_unprintable_names, folder_name, integer, number)


def default_workers():
    """Loader workers per process: the machine's CPUs over torchrun's processes on it, within 2..16 (they decode
    JPEGs only; the resize runs on the device)."""
    return max(2, min(16, (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    # published flags
    p.add_argument("--gpu_id", type=integer(0), default=None, help="published flag; same as --device cuda:ID")
    p.add_argument("--start_epoch", type=integer(0), default=0, help="first epoch when resuming from a bare epochN.pth")
    p.add_argument("--epoch_num", type=integer(1), default=100, help="epochs to train (counted from 0)")
    p.add_argument("--batch_size", type=integer(1), default=2, help="images per step (per process under torchrun)")
    p.add_argument("--crop_size", type=integer(32), default=384, help="training images are resized to crop_size x "
                   "crop_size")
    p.add_argument("--lr", type=number(0, above=True), default=1e-4, help="Adam's learning rate")
    p.add_argument("--weight_decay", type=number(0), default=1e-4, help="Adam's weight decay")
    p.add_argument("--dataset_name", type=folder_name, default="LaPa-Face", help="the training set, DATASET_ROOT/NAME/"
                   "{underexposed,normal,seg}")
    p.add_argument("--contrast_positive_path", default="dataset/Contrast/high", help="normal-light images, the "
                   "contrastive positives")
    p.add_argument("--contrast_negative_path", default="dataset/Contrast/low", help="low-light images, the "
                   "contrastive negatives")
    p.add_argument("--checkpoint_root", default="checkpoint/LLE/", help="where epochN.pth, resume.pth and best.pth go")
    p.add_argument("--resume", action="store_true", help="continue from --resume_checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over where an earlier run wrote: remove its "
                   "resume.pth, best.pth and epochN.pth in --checkpoint_root and its tensorboard/ events and previews/ "
                   "beside --log_path (once set-up has succeeded); without it such files stop the run")
    p.add_argument("--resume_checkpoint", default=None, help="resume.pth (full state) or epochN.pth (weights); "
                   "default: CHECKPOINT_ROOT/resume.pth")
    p.add_argument("--log_path", default="log/train.txt", help="the text log (appended); run.json, tensorboard/ and "
                   "previews/ go beside it")
    # this project's additions
    p.add_argument("--dataset_root", default="dataset", help="the folder of the data sets")
    p.add_argument("--database_root", default="database", help="DATABASE_ROOT/NAME holds the first image of each "
                   "identity (built on first use)")
    p.add_argument("--encoding_root", default="encoding", help="cached face database encodings")
    p.add_argument("--facenet_checkpoint", default="checkpoint/facenet_mobilenet.pth",
                   help="FaceNet weights (face loss and database)")
    p.add_argument("--backbone", default="mobilenet", choices=["mobilenet", "inception_resnetv1"],
                   help="FaceNet's backbone")
    p.add_argument("--retinaface_checkpoint", default="checkpoint/Retinaface_mobilenet0.25.pth", help="RetinaFace "
                   "weights (face detection)")
    p.add_argument("--vgg_checkpoint", default=None, help="local torchvision vgg16 file (default: torchvision's "
                   "ImageNet weights through its cache under TORCH_HOME)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--num_workers", type=integer(0), default=default_workers(), help="loader processes per training "
                   "process (default: the CPUs shared among torchrun's processes on this machine, 2 to 16)")
    p.add_argument("--seed", type=integer(0, 2 ** 32 - 1), default=1, help="seeds weights, data order and contrastive "
                   "samples")
    p.add_argument("--log_every", type=integer(1), default=10, help="iterations between log lines (and the last, "
                   "shorter window of each epoch)")
    p.add_argument("--save_every", type=integer(1), default=500, help="iterations between resume points")
    p.add_argument("--max_iters", type=integer(1), default=None, help="stop after this many iterations in all "
                   "(tests, trials)")
    add_precision_flags(p)  # bf16: the ratio losses, the smoothness weights, the face crops and cosines stay float32
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the enhancement network, the VGG taps and the image loss terms (mode default, "
                   "or reduce-overhead: CUDA graphs of them); off by default; the first steps then take minutes")
    p.add_argument("--memory_format", default="auto", choices=["auto", "channels_last", "contiguous"],
                   help="layout of the enhancement network in training; auto: the faster one on this device, timed "
                   "at the start on a CPU, channels_last on CUDA (contiguous, the published one, with "
                   "--deterministic); results do not depend on it")
    p.add_argument("--dist_timeout", type=integer(1), default=60, help="minutes a torchrun process waits for the "
                   "others (rank 0 builds the face database and validates alone) before the run ends")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels only (bit-reproducible runs "
                   "and resumes on one device; slower on CUDA)")
    p.add_argument("--val_dataset", default=None, help="validate on DATASET_ROOT/NAME/{underexposed,normal} every "
                   "--val_every epochs: PSNR, SSIM, brightness, face accuracy; best.pth and preview pictures")
    p.add_argument("--val_every", type=integer(1), default=1, help="epochs between validations")
    p.add_argument("--best_metric", default="face_acc", choices=("face_acc", "psnr", "ssim"), help="the validation "
                   "measure (higher is better) that chooses CHECKPOINT_ROOT/best.pth (ties by PSNR)")
    p.add_argument("--preview_images", type=integer(0), default=4, help="validation images in each preview picture, "
                   "LOG_FOLDER/previews/epoch{N}.png (rows input | enhanced | normal)")
    return p.parse_args(argv)


def check_args(args):
    """Exit with one line, before any work, when the settings or folders cannot work (utils.checks.check_paths)."""
    if args.start_epoch >= args.epoch_num and not args.resume:
        sys.exit(f"error: --start_epoch {args.start_epoch} is not below --epoch_num {args.epoch_num}: nothing to train")
    if args.resume_checkpoint and not args.resume:
        sys.exit("error: --resume_checkpoint is used only with --resume")
    resume = args.resume_checkpoint or os.path.join(args.checkpoint_root, "resume.pth")
    if args.resume and not os.path.isfile(resume):
        sys.exit(f"error: {resume}: no resume point to continue from (--resume); name one with --resume_checkpoint")
    data_dir = os.path.join(args.dataset_root, args.dataset_name)
    reads = [(f"the training set's {sub} (--dataset_name)", os.path.join(data_dir, sub))
             for sub in ("underexposed", "normal", "seg")]
    reads += [(flag, getattr(args, flag[2:])) for flag in ("--contrast_positive_path", "--contrast_negative_path")]
    if args.val_dataset:
        val_dir = os.path.join(args.dataset_root, args.val_dataset)
        reads += [(f"the validation set's {sub} (--val_dataset)", os.path.join(val_dir, sub))
                  for sub in ("underexposed", "normal")]
    database = ("the face database folder (--database_root)", os.path.join(args.database_root, args.dataset_name))
    writes = [("--checkpoint_root", args.checkpoint_root), database, ("--encoding_root", args.encoding_root)]
    if args.val_dataset and args.val_dataset != args.dataset_name:
        writes.append(("the validation set's face database folder (--database_root)",
                       os.path.join(args.database_root, args.val_dataset)))
    check_paths(reads=reads, writes=writes, logs=[("--log_path", args.log_path)])
    check_checkpoints([("--retinaface_checkpoint", args.retinaface_checkpoint, "Retinaface_mobilenet0.25.pth"),
                       ("--facenet_checkpoint", args.facenet_checkpoint,
                        "facenet_mobilenet.pth" if args.backbone == "mobilenet" else None),
                       ("--vgg_checkpoint", args.vgg_checkpoint, None)])
    if args.overwrite and args.resume:
        sys.exit("error: --overwrite starts over, --resume continues: use one of them")
    earlier = earlier_run_files(args)
    if earlier and not (args.resume or args.overwrite):
        more = f" and {len(earlier) - 1} more" if len(earlier) > 1 else ""
        sys.exit(f"error: {earlier[0]}{more}: files of an earlier run; continue it with --resume, or start over with "
                 "--overwrite (removes them) or with another --checkpoint_root and --log_path")


def earlier_run_files(args):
    """The files of an earlier run that a new one would replace or hide: CHECKPOINT_ROOT/{resume,best,epochN}.pth,
    and beside --log_path tensorboard/ event files and previews/epochN.png (the log and run.json are appended to)."""
    log_dir = os.path.dirname(os.path.abspath(args.log_path))
    found = []
    for folder, pattern in ((args.checkpoint_root, r"resume\.pth|best\.pth|epoch\d+\.pth"),
                            (os.path.join(log_dir, "tensorboard"), r"events\.out\.tfevents\..*"),
                            (os.path.join(log_dir, "previews"), r"epoch\d+\.png")):
        names = os.listdir(folder) if os.path.isdir(folder) else []
        found += sorted(os.path.join(folder, name) for name in names if re.fullmatch(pattern, name))
    return found


class Interrupted(SystemExit):
    """SIGINT or SIGTERM ended the run at once; exits with status 128 + the signal's number (130, 143)."""

    def __init__(self, signum):
        super().__init__(128 + signum)
        self.name = signal.Signals(signum).name


class Signals:
    """The handler of SIGINT and SIGTERM. Until `training` is set (set-up: loading, the face database, checks) a
    signal raises Interrupted at once. In training the first one is only recorded in `signal`, and the loop saves
    a resume point after the current step and stops; a second one raises Interrupted at once."""

    def __init__(self):
        self.signal, self.training = None, False

    def __call__(self, signum, _frame):
        if self.training and self.signal is None:
            self.signal = signum
        else:
            raise Interrupted(signum)


def stop_while_loading(signum, _frame):
    """A signal while torch loads (python train.py): one line, exit 128 + its number."""
    os.write(2, f"interrupted by {signal.Signals(signum).name} while starting; nothing was written\n".encode())
    raise Interrupted(signum)


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, stop_while_loading)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

import nets  # noqa: E402
from nets.enhance import EnhanceNet, init_weights, training_layout  # noqa: E402
from nets.face_recognition import FaceRecognitionLoss  # noqa: E402
from nets.facenet import load_facenet  # noqa: E402
from nets.losses import LowFaceNetObjective  # noqa: E402
from nets.retinaface import load_retinaface  # noqa: E402
from nets.vgg import load_vgg16  # noqa: E402
from utils.checkpoint import CheckpointError, WriteError, atomic_save, check_finite, read_checkpoint  # noqa: E402
from utils import distributed  # noqa: E402
from utils.data import TrainingDataGone, TrainSet, collate_training, training_batch  # noqa: E402
from utils.face_database import load_encodings  # noqa: E402
from utils.images import write_image  # noqa: E402
from utils.metrics import brightness  # noqa: E402
from utils.monitor import Board, progress, write_run_record  # noqa: E402
from utils.runtime import (autocast, keep_freed_memory, seed_everything, set_precision,  # noqa: E402
                           to_host)
from utils.validation import BestCheckpoint, Validation  # noqa: E402


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
            try:
                with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                    f.write(line + "\n")
            except OSError as e:  # a full disk: one line (main ends the run with it), no traceback
                raise WriteError(e.errno, e.strerror or str(e), self.path) from None

    def fail(self, message):
        """Appends 'error: message' to the log file (when the disk still takes it) and exits with it (status 1)."""
        if self.main:
            try:
                with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                    f.write(f"error: {message}\n")
            except OSError:  # a full disk: the line still goes to stderr
                pass
        sys.exit(f"error: {message}")


class NonFiniteStep(ArithmeticError):
    """A loss term or the gradient norm stopped being finite; no weight was changed from then on."""


class StepMonitor:
    """What the loop needs of every step, kept on the device so that the host reads it in one copy per log line:
    the sums of the loss and its terms, the faces identified and the last mean brightness since the last `read`,
    and the finite check. A NaN/Inf loss term or gradient norm sets `found_inf`, with which the fused Adam skips
    that step's update and every later one (as under GradScaler), so the weights stay those before it until
    `check` or `read` raise NonFiniteStep naming the first bad value."""

    def __init__(self, device):
        self.found_inf = torch.zeros((), device=device)  # 1.0 from the first non-finite step on
        self.first_bad = torch.zeros(3, dtype=torch.float64, device=device)  # which value, the value, the iteration
        self.names = None
        self.reset()

    def reset(self, epoch=0):
        """Start the sums afresh (the finite check goes on); `epoch` is named by NonFiniteStep."""
        self.sums, self.seen, self.steps, self.epoch = 0, 0, 0, epoch
        self.correct = torch.zeros((), device=self.found_inf.device)

    def update(self, total, terms, grad_norm, enhanced, logits, labels, iteration):
        """Record a step (nothing is read on the host); returns found_inf for the optimizer."""
        self.names = [*terms, "total", "gradient norm"]
        values = torch.stack([*terms.values(), total.detach(), grad_norm]).float()
        finite = torch.isfinite(values)
        first = (~finite).to(torch.uint8).argmax()  # the first non-finite value (0 when all are finite)
        record = torch.stack([first.double(), values.gather(0, first[None])[0].double(),
                              torch.full_like(self.first_bad[0], iteration)])
        newly = ~finite.all() & (self.found_inf == 0)
        self.first_bad = torch.where(newly, record, self.first_bad)
        self.found_inf = torch.maximum(self.found_inf, newly.float())
        self.sums = self.sums + values[:-1]
        if logits is not None:  # None without a face loss
            self.correct = self.correct + (logits.argmax(1) == labels).sum()
        self.seen += len(labels)
        self.brightness = brightness(enhanced.detach())
        self.steps += 1
        return self.found_inf

    def _raise_if_bad(self, found_inf, which, value, iteration):
        if found_inf:
            name = self.names[int(which)]
            what = "the gradient norm" if name == "gradient norm" else f"loss term {name}"
            raise NonFiniteStep(f"{what} became {value} at epoch {self.epoch} iteration {int(iteration)}")

    def check(self):
        """Raise NonFiniteStep if a step since the start was not finite (one copy to the host)."""
        self._raise_if_bad(*to_host(torch.cat([self.found_inf[None].double(), self.first_bad])).tolist())

    def read(self):
        """({"loss": mean, term: mean, ...}, faces identified, images, last mean brightness) since the last read, in
        one copy to the host; raises NonFiniteStep if a step was not finite."""
        host = to_host(torch.cat([self.found_inf[None].double(), self.first_bad, self.sums.double(),
                                  torch.stack([self.correct, self.brightness]).double()])).tolist()
        self._raise_if_bad(*host[:4])
        sums, (correct, brightness) = host[4:-2], host[-2:]
        means = {"loss": sums[-1] / self.steps, **{k: v / self.steps for k, v in zip(self.names, sums[:-1])}}
        result = means, int(correct), self.seen, brightness
        self.reset(self.epoch)
        return result


def train_step(model, objective, optimizer, batch, monitor, precision="tf32", iteration=0):
    """One step of the published recipe on batch = (low, seg, labels, positives, negatives): forward (bf16 autocast
    with precision bf16), backward, gradient norm clipped to 0.1, Adam (fused, given the monitor's found_inf).
    Returns (enhanced, total, terms, face_logits), all on the device; the host waits for the device only for
    the face detections. A step that is not finite changes no weight (see StepMonitor)."""
    low, seg, labels, pos, neg = batch
    with autocast(low.device, precision):
        enhanced, illumination = model(low)
        total, terms, logits = objective(enhanced, illumination, low, pos, neg, seg, labels)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.found_inf = monitor.update(total, terms, grad_norm, enhanced, logits, labels, iteration)
    optimizer.step()
    return enhanced, total, terms, logits


def compile_step(model, objective, mode="default"):
    """torch.compile the enhancement network (in place: its state dict keeps its keys), the objective's VGG taps and
    its image terms (mostly elementwise work, which compiling fuses); the detector, FaceNet and the optimizer stay
    eager (their shapes follow the faces found)."""
    model.compile(mode=mode)
    objective.vgg = torch.compile(objective.vgg, mode=mode)  # a compiled wrapper: the VGG module itself stays eager
    objective.image_terms = torch.compile(objective.image_terms, mode=mode)


def make_optimizer(model, args):
    """Adam of the published recipe, fused: one kernel, and it can skip a step on the device (found_inf)."""
    return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)


def load_optimizer_state(optimizer, state):
    """Load an Adam state dict and keep the optimizer fused (resume points of earlier versions hold unfused ones)."""
    for group in state["param_groups"]:
        group.update(fused=True, foreach=None)
    optimizer.load_state_dict(state)


def leave_signals_to_main(_):
    """DataLoader workers ignore Ctrl-C and SIGTERM (a scheduler signals every process of a job): the main process
    saves a resume point and then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    escape_unprintable_names()
    if args.deterministic:  # read when cuBLAS starts: before anything touches the device
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    try:  # first of all: a device this machine lacks is a one-line error
        rank, world, device = distributed.setup(
            f"cuda:{args.gpu_id}" if args.gpu_id is not None and args.device == "auto" else args.device,
            args.dist_timeout)
    except ValueError as e:
        sys.exit(f"error: {e}")
    keep_freed_memory()
    seed_everything(args.seed)
    set_precision(args.precision)
    # the shapes of a step are fixed (FaceNet's batch is padded to the batch on CUDA): cuDNN times its kernels once
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.deterministic
    deterministic = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:  # on CUDA the face crops then take their deterministic path (nets.face_recognition)
        torch.use_deterministic_algorithms(True)
    log = Log(args.log_path, main=rank == 0)
    stop = Signals()
    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    resume_path = os.path.join(args.checkpoint_root, "resume.pth")
    try:
        train(args, log, stop, rank, world, device)
        if stop.signal:  # the loop saved a resume point and stopped: non-zero, so that `train.py && next` stops
            raise SystemExit(128 + stop.signal)
    except Interrupted as e:
        log(f"interrupted by {e.name} " + (f"in training ({last_resume_point(resume_path)})" if stop.training else
                                           f"before training started; nothing was written to {args.checkpoint_root}"))
        raise
    except NonFiniteStep as e:  # raised where the host reads the monitor: no weight was changed by the step or after
        log.fail(f"{e}; stopped before writing these weights ({last_resume_point(resume_path)})")
    except WriteError as e:  # a full disk: nothing partial is left, the files written before stay
        log.fail(f"{e.line}; training stopped ({last_resume_point(resume_path)})")
    except TrainingDataGone as e:  # raised in a loader worker, its message ends with the worker's traceback
        log.fail(str(e).strip().splitlines()[-1].removeprefix(f"{TrainingDataGone.__module__}.TrainingDataGone: "))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        distributed.cleanup()


def last_resume_point(resume_path):
    """The end of a stop line: the resume point to continue from, if there is one."""
    return f"last resume point: {resume_path}" if os.path.exists(resume_path) else "no resume point written yet"


def train(args, log, stop, rank, world, device):
    main_process = rank == 0

    # ---- face database, data ----
    data_dir = os.path.join(args.dataset_root, args.dataset_name)  # its folders are checked by check_args
    validation = check_validation_set(args, log, main_process)
    try:
        detector = load_retinaface(args.retinaface_checkpoint, device)
        facenet = load_facenet(args.facenet_checkpoint, args.backbone, device)
        for turn in (True, False):  # rank 0 builds the database and encodings; the others then read the cache
            if main_process == turn:
                encodings, names = load_encodings(
                    os.path.join(data_dir, "normal"), os.path.join(args.database_root, args.dataset_name),
                    args.encoding_root, args.dataset_name, detector, facenet, device)
                train_set = TrainSet(data_dir, names, args.crop_size, args.contrast_positive_path,
                                     args.contrast_negative_path, args.seed)
            distributed.barrier()
        unreadable = distributed.gather(train_set.unreadable(rank, world))  # each rank checks its share of the files
        if validation and main_process:  # rank 0 alone validates
            validation.load_face_database(args.database_root, args.encoding_root, detector, facenet, device)
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
    optimizer = make_optimizer(model, args)
    resume_path = os.path.join(args.checkpoint_root, "resume.pth")
    epoch, start_batch = args.start_epoch, 0
    best = BestCheckpoint(os.path.join(args.checkpoint_root, "best.pth"), args.best_metric, args.val_dataset)
    data_fingerprint = training_files_fingerprint(train_set)
    if args.resume:
        path = args.resume_checkpoint or resume_path
        try:
            state = read_checkpoint(path)
            if isinstance(state, dict) and "optimizer" in state:
                written = (state["images"], state["args"]["batch_size"], state["args"]["seed"], state["world"])
                if written != (len(train_set), args.batch_size, args.seed, world):  # they fix the data order
                    log.fail(f"{path}: written for (images, batch_size, seed, processes) = {written}, this run has "
                             f"{(len(train_set), args.batch_size, args.seed, world)}; resume with the same data and settings")
                if state["args"].get("crop_size", args.crop_size) != args.crop_size:
                    log.fail(f"{path}: written for --crop_size {state['args']['crop_size']}, this run has "
                             f"{args.crop_size}; resume with the same data and settings")
                if state.get("data", data_fingerprint) != data_fingerprint:  # resume points of earlier versions lack it
                    log.fail(f"{path}: written for other training files than {data_dir} and the contrastive "
                             "folders hold now (names or sizes differ); resume with the same data, or start over "
                             "with --overwrite")
                check_finite(state["model"], f"{path}: model")
                model.load_state_dict(state["model"])
                load_optimizer_state(optimizer, state["optimizer"])
                for group in optimizer.param_groups:  # this run's settings, named below when they differ
                    group.update(lr=args.lr, weight_decay=args.weight_decay)
                changed = [f"--{k} {v} -> {vars(args)[k]}" for k, v in state["args"].items()
                           if k not in ("resume", "resume_checkpoint", "overwrite") and vars(args).get(k, v) != v]
                if changed:
                    log(f"settings changed since {path} was written (this run uses the new ones): {', '.join(changed)}")
                epoch, start_batch = state["epoch"], state["batch"]
                restore_rng(state["rng"])
                best.load_state_dict(state.get("best"))
            else:
                model = nets.load("enhance", path, device).train()
                optimizer = make_optimizer(model, args)
                if validation and os.path.isfile(best.path):  # an earlier run's best: replaced only when beaten
                    record = os.path.join(args.checkpoint_root, "resume.pth")
                    known = read_checkpoint(record).get("best") if os.path.isfile(record) else None
                    if not known or known["measures"] is None or known["dataset"] != args.val_dataset:
                        log.fail(f"{best.path}: the best weights of an earlier run, whose score on "
                                 f"{args.val_dataset} neither {path} nor a resume.pth beside it carries; move it away "
                                 "to keep it, or resume from a resume.pth")
                    best.load_state_dict(known)
        except CheckpointError as e:
            log.fail(f"cannot resume: {e}")
        except (KeyError, RuntimeError) as e:
            log.fail(f"{path}: cannot resume ({type(e).__name__}: {str(e).splitlines()[0]})")
        log(f"resumed from {path} at epoch {epoch}, iteration {start_batch}")
        if validation:
            log(f"best so far: {best.describe()}")
    layout = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}.get(args.memory_format)
    if layout is None:  # every rank must hold the same layout: channels_last if any rank timed it faster
        timed_faster = not args.deterministic and \
            training_layout(device, args.precision == "bf16") == torch.channels_last
        layout = torch.channels_last if distributed.any_rank(timed_faster) else torch.contiguous_format
    model.to(memory_format=layout)
    if args.compile:
        compile_step(model, objective, args.compile)
    processes = f" per process x {world} processes" if world > 1 else ""
    log(f"training on {device}: {len(train_set)} images, {len(names)} identities, batch {args.batch_size}{processes}, "
        f"{iters_per_epoch} iterations per epoch, epochs {epoch}..{args.epoch_num - 1}, "
        f"{str(layout).removeprefix('torch.')}")
    log_dir = os.path.dirname(os.path.abspath(args.log_path))
    if args.overwrite and main_process:  # set-up went well: only now is the earlier run's work removed
        earlier = earlier_run_files(args)
        for file in earlier:
            os.remove(file)
        if earlier:
            log(f"--overwrite: removed {len(earlier)} files of an earlier run from {args.checkpoint_root} and "
                f"{log_dir}")
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
        monitor.check()
        if not main_process:
            return
        atomic_save({"model": weights(), "optimizer": optimizer.state_dict(), "epoch": epoch, "batch": batch,
                     "images": len(train_set), "world": world, "rng": rng_state(), "args": vars(args),
                     "best": best.state_dict(), "data": data_fingerprint}, resume_path)

    def stop_requested():  # a signal seen by any rank stops them all together
        return distributed.any_rank(bool(stop.signal))

    def stopped_by():
        return f" by {signal.Signals(stop.signal).name}" if stop.signal else ""

    def validate(epoch):  # on rank 0, the weights after `epoch`; the training state stays exactly as it was
        if main_process:
            rng = rng_state()
            fixed_shapes, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False  # sizes vary
            with torch.compiler.set_stance("force_eager"):  # --compile would recompile for each image size
                measures, preview = validation(net, device, args.precision, args.preview_images, report=log)
            torch.backends.cudnn.benchmark = fixed_shapes
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
    monitor = StepMonitor(device)
    model.train()
    stop.training = True  # from here a signal saves a resume point after the current step (set-up: stops at once)
    order = []  # this epoch's (epoch, index) keys, refilled each epoch: the loader's workers start once and persist
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=order, num_workers=args.num_workers,
                        drop_last=True, pin_memory=device.type == "cuda", worker_init_fn=leave_signals_to_main,
                        collate_fn=collate_training, persistent_workers=args.num_workers > 0)
    try:
        while epoch < args.epoch_num:
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch)
            order[:] = [(epoch, i) for i in list(sampler)[start_batch * args.batch_size:]]  # resumable mid-epoch
            correct = seen = 0
            monitor.reset(epoch)
            tic = time.time()
            bar = progress(iters_per_epoch * args.batch_size * world, start_batch * args.batch_size * world, epoch,
                           main_process)
            batches = iter(loader)
            for it, batch in enumerate(batches, start=start_batch):
                batch = training_batch(batch, train_set.size, device)  # uint8 from the workers, resized here
                train_step(model, objective, optimizer, batch, monitor, args.precision, it + 1)
                done += 1
                bar.update(args.batch_size * world)
                finished_epoch = it + 1 == iters_per_epoch
                if (it + 1) % args.log_every == 0 or finished_epoch:  # and the epoch's last, shorter window
                    n = monitor.steps  # iterations since the last log line
                    means, faces, images, brightness = monitor.read()  # the one copy to the host per log line
                    correct, seen = correct + faces, seen + images
                    terms = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
                    seconds = time.time() - tic
                    log(f"epoch {epoch} iter {it + 1}/{iters_per_epoch} loss {means['loss']:.4f} "
                        f"face_acc {correct / seen:.4f} brightness {brightness:.4f} | {terms} | {seconds / n:.2f} s/it")
                    board.scalars(epoch * iters_per_epoch + it + 1, {
                        **means, "face_acc": correct / seen, "brightness": brightness,
                        "lr": optimizer.param_groups[0]["lr"], "images_per_s": n * args.batch_size * world / seconds},
                        "train")
                    tic = time.time()
                # under torchrun the ranks agree on a signal (a read of the device) at log lines and epoch ends only
                agree = world == 1 or finished_epoch or (it + 1) % args.log_every == 0
                stopping = (agree and stop_requested()) or (args.max_iters and done >= args.max_iters)
                if stopping or (not finished_epoch and (it + 1) % args.save_every == 0):
                    save_resume(epoch, it + 1)
                if stopping:
                    bar.close()
                    board.close()
                    log(f"stopped at epoch {epoch} iteration {it + 1}{stopped_by()}; continue with --resume "
                        f"({resume_path})")
                    return
            monitor.check()
            bar.close()
            if main_process:
                atomic_save(weights(), os.path.join(args.checkpoint_root, f"epoch{epoch}.pth"))
            if validation and (epoch + 1) % args.val_every == 0:
                validate(epoch)
            epoch, start_batch = epoch + 1, 0
            save_resume(epoch, 0)
            log(f"epoch {epoch - 1} done: wrote {os.path.join(args.checkpoint_root, f'epoch{epoch - 1}.pth')}")
            if stop_requested():  # a signal during the epoch's checkpoint or validation
                log(f"stopped after epoch {epoch - 1}{stopped_by()}; " + (f"continue with --resume ({resume_path})"
                    if epoch < args.epoch_num else "training is complete"))
                break
    finally:  # loader workers ignore SIGTERM (see leave_signals_to_main): stop them also when an error ends the run
        getattr(loader._iterator, "_shutdown_workers", lambda: None)()
    board.close()


def check_validation_set(args, log, main_process):
    """The Validation of --val_dataset (None without one), checked before anything else is done: a missing or empty
    folder, an image without its normal-light image or one that cannot be read ends the run with one line."""
    if not args.val_dataset:
        return None
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


def training_files_fingerprint(train_set):
    """sha256 of what defines the training data: the names and sizes of the training images, their parsing maps and
    the contrastive images, and each image's identity label. A resume point holds it, so that resuming on another
    data set (even of the same size) is refused."""
    h = hashlib.sha256()
    parts = [[(rel, label) for rel, label in zip(train_set.files, train_set.labels)],
             [(os.path.relpath(train_set._seg_path(rel), train_set.seg_dir), "") for rel in train_set.files],
             *([(rel, "") for rel in rels] for _, rels in train_set.contrast)]
    for folder, part in zip([train_set.low_dir, train_set.seg_dir, *(f for f, _ in train_set.contrast)], parts):
        h.update(f"{len(part)} files\n".encode())  # the folders' own paths left out: a data set may move
        for rel, label in part:
            path = os.path.join(folder, rel)
            size = os.path.getsize(path) if os.path.exists(path) else -1
            h.update(f"{rel}\0{size}\0{label}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


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
