"""Enhance every image of a folder with a Low-FaceNet checkpoint; names, extensions and sub-folders are kept.

    python test.py --underexposed_path dataset/CASIA-Test/underexposed \
                   --enhanced_path dataset/CASIA-Test/SOTAs/Ours --enhance_checkpoint checkpoint/Low-FaceNet.pth

Images go in whole (no resizing; very large ones in overlapping tiles with the same result) and are written
as torchvision's save_image writes them. With --comparison_path, a side-by-side picture (input | enhanced |
normal, when the normal-light image exists) is also written for each image. The output folders must lie apart
from the folders read and from each other. Nothing is deleted; existing outputs are kept unless --overwrite, and
a rerun writes every output still missing (an interrupted run resumes by running the same command again). Entries
that are not images (.DS_Store, Thumbs.db, .txt, hidden or unlistable folders) are passed over with a line each;
an image that cannot be read, or an output that cannot be written, gets a line and the others are still written.
Exit status 1 when an image failed, an output asked for is missing at the end, or the folder holds no image.
"""
import os
import sys

from utils.checks import (ArgumentParser, add_precision_flags, check_paths, device_name, escape_unprintable_names,
                          integer)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--underexposed_path", default="dataset/CASIA-Test/underexposed", help="folder of low-light images")
    p.add_argument("--enhanced_path", default="dataset/CASIA-Test/SOTAs/Ours", help="output folder")
    p.add_argument("--enhance_checkpoint", default="checkpoint/Low-FaceNet.pth")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch_size", type=integer(1), default=1, help="images of equal size enhanced together (1, as "
                   "published, is the fastest on CPUs; 4-16 on GPUs)")
    p.add_argument("--num_workers", type=integer(0), default=max(2, (os.cpu_count() or 2) // 2),
                   help="image decoding threads (default: half the CPUs, at least 2)")
    p.add_argument("--writers", type=integer(1), default=os.cpu_count() or 1, help="image encoding processes "
                   "(threads where processes cannot be forked: macOS, Windows)")
    p.add_argument("--tile", type=integer(1), default=512, help="images larger than tile x tile go through in tiles "
                   "(bounded memory: about 1.5 GiB at 512 on a CPU; the result does not depend on it)")
    add_precision_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--fsync", action="store_true", help="flush each output file to disk before the next (slower; "
                   "without it every file is still written whole under its name, atomically)")
    p.add_argument("--comparison_path", default=None, help="also write input | enhanced | normal pictures (PNG) here")
    p.add_argument("--normal_path", default=None, help="normal-light images for the pictures (default: the "
                   "input folder's sibling normal/, when there is one)")
    return p.parse_args(argv)


def normal_folder(args):
    """The normal-light images of the comparison pictures: --normal_path, else the input folder's sibling normal/."""
    return args.normal_path or os.path.join(os.path.dirname(os.path.abspath(args.underexposed_path)), "normal")


def check_args(args):
    """Exit with one line, before any work, when the folders cannot work together (utils.checks.check_paths)."""
    if args.normal_path and not args.comparison_path:
        sys.exit("error: --normal_path is used only with --comparison_path")
    normal = [("--normal_path" if args.normal_path else "the normal-light folder", normal_folder(args))]
    check_paths(reads=[("--underexposed_path", args.underexposed_path)] + (normal if args.normal_path else []),
                optional_reads=normal if args.comparison_path and not args.normal_path else [],
                writes=[("--enhanced_path", args.enhanced_path), ("--comparison_path", args.comparison_path)])


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch

import multiprocessing  # noqa: E402
from collections import deque  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor  # noqa: E402

from tqdm import tqdm  # noqa: E402

import nets  # noqa: E402
from nets.enhance import enhance_uint8  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402
from utils.data import read_ahead  # noqa: E402
from utils.images import ImageReadError, list_images, read_image, side_by_side, write_image  # noqa: E402
from utils.runtime import keep_freed_memory, start_device, start_to_host  # noqa: E402


class ImageFiles:
    """(relative path, HxWx3 uint8 array or an error message) for each file."""

    def __init__(self, root, files):
        self.root, self.files = root, files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return self.files[i], read_image(os.path.join(self.root, self.files[i]))
        except ImageReadError as e:
            return self.files[i], str(e)


def save(enhanced, output=None, image=None, comparison=None, normal=None, fsync=False):
    """Write the enhanced image (HxWx3 uint8) to `output` and the picture image | enhanced | normal (when the file
    `normal` exists) to `comparison`, each unless None (fsync: see utils.checkpoint.atomic_write). Runs in the
    writer processes; returns a line for each file that could not be written."""
    errors = []
    for path in (p for p in (output, comparison) if p):
        try:
            if path == output:
                write_image(enhanced, path, fsync)
            else:
                write_image(side_by_side([image, enhanced] + ([read_image(normal)] if os.path.isfile(normal) else [])),
                            path, fsync)
        except ImageReadError as e:
            errors.append(f"{path}: not written ({e})")
        except (OSError, ValueError) as e:
            errors.append(f"{path}: cannot write ({e})")
    return errors


def writer_pool(workers):
    """Encoders of the output images: processes, forked before the device and the reading threads start, where the
    system forks (PIL's encoders stopped scaling at one thread), else threads."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return ThreadPoolExecutor(workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    pool.submit(int).result()  # forks every worker now
    return pool


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    escape_unprintable_names()
    files, passed_over = list_images(args.underexposed_path, say=print)
    if not files:
        sys.exit(f"error: no images found in {args.underexposed_path}")
    keep_freed_memory()
    failed, failed_images = [], set()

    def fail(rel, message):
        failed.append(message)
        failed_images.add(rel)
        tqdm.write(f"failed {message}")

    out = lambda rel: os.path.join(args.enhanced_path, rel)
    picture = lambda rel: os.path.join(args.comparison_path, os.path.splitext(rel)[0] + ".png")
    asked = {rel: [out(rel)] + ([picture(rel)] if args.comparison_path else []) for rel in files}
    sharing = {}  # a.jpg and a.png would make the same comparison picture a.png: neither is written
    for rel in files if args.comparison_path else []:
        sharing.setdefault(picture(rel), []).append(rel)
    for path, rels in sharing.items():
        names = [os.path.join(args.underexposed_path, rel) for rel in rels]
        for rel, name in zip(rels, names) if len(rels) > 1 else ():
            fail(rel, f"{path}: not written: it would be the comparison picture of {name} and of "
                      + ", ".join(other for other in names if other != name))
    wanted = {rel: [p for p in paths if (args.overwrite or not os.path.isfile(p)) and len(sharing.get(p, [])) < 2]
              for rel, paths in asked.items()}
    todo = [rel for rel in files if wanted[rel]]
    existing = len(files) - len(todo)
    normal_dir = normal_folder(args)
    # the writer processes fork before the device starts (a process forked after CUDA starts cannot use it) and
    # before the reading threads start
    writer = writer_pool(max(1, min(args.writers, len(todo))))
    device = start_device(args.device, args.precision)
    try:
        model = nets.load("enhance", args.enhance_checkpoint, device)
    except CheckpointError as e:
        writer.shutdown()
        sys.exit(f"error: {e}")
    print(f"weights: {args.enhance_checkpoint}")
    print(f"enhancing {len(todo)} images from {args.underexposed_path} into {args.enhanced_path} on {device}"
          + (f" ({existing} already there, kept; --overwrite replaces them)" if existing else ""))

    loader = read_ahead(ImageFiles(args.underexposed_path, todo), args.batch_size, args.num_workers)
    pending = []

    def finish(job_count):  # collect the oldest writes (bounding memory) and record write errors
        nonlocal written
        for rel, job in pending[:job_count]:
            errors = job.result()
            for message in errors:
                fail(rel, message)
            written += not errors
        del pending[:job_count]

    def deliver(host, wait, group):  # once the batch is on the host, hand its images to the writers
        wait()
        for (rel, image), enhanced in zip(group, host.numpy()):
            output = out(rel) if out(rel) in wanted[rel] else None
            comparison = picture(rel) if args.comparison_path and picture(rel) in wanted[rel] else None
            pending.append((rel, writer.submit(save, enhanced, output, image if comparison else None, comparison,
                                               os.path.join(normal_dir, rel), args.fsync)))

    written, in_flight = 0, deque()
    with writer, tqdm(total=len(todo), unit="img") as bar:
        for batch in loader:
            good = []
            for rel, image in batch:
                if isinstance(image, str):
                    fail(rel, image)
                else:
                    good.append((rel, image))
            for index, uint8 in enhance_uint8(model, [image for _, image in good], device, args.tile, args.precision):
                in_flight.append((*start_to_host(uint8), [good[i] for i in index]))
            while len(in_flight) > 1:  # the device computes this batch while the host hands on the one before
                deliver(*in_flight.popleft())
            finish(max(0, len(pending) - 4 * args.batch_size))
            bar.update(len(batch))
        while in_flight:
            deliver(*in_flight.popleft())
        finish(len(pending))
    missing = [(rel, path) for rel in files for path in asked[rel] if not os.path.isfile(path)]
    for rel, path in missing:
        if rel not in failed_images:  # the others are named above
            print(f"missing {path}")
    print(f"done: {written} written, {existing} kept, {len(failed)} failed, {len(passed_over)} other entries passed "
          f"over" + (f"; {len(missing)} of the {sum(map(len, asked.values()))} files asked for are missing" if missing
                     else ""))
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
