"""Enhance every image of a folder with a Low-FaceNet checkpoint; names, extensions and sub-folders are kept.

    python test.py --underexposed_path dataset/CASIA-Test/underexposed \
                   --enhanced_path dataset/CASIA-Test/SOTAs/Ours --enhance_checkpoint checkpoint/Low-FaceNet.pth

Images go in whole (no resizing; very large ones in overlapping tiles with the same result) and are written
as torchvision's save_image writes them. Nothing is deleted; existing outputs are kept unless --overwrite,
so an interrupted run resumes by running the same command again. With --comparison_path, a side-by-side
picture (input | enhanced | normal, when the normal-light image exists) is also written for each image. Files that are not images (.DS_Store,
Thumbs.db, .txt) are passed over with a line each; an image file that cannot be read or written gets a line and
the others are still written. Exit status 1 when an image failed or the folder holds no image.
"""
import argparse
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

import nets
from nets.enhance import enhance
from utils.checkpoint import CheckpointError
from utils.data import read_ahead
from utils.images import ImageReadError, list_images, read_image, side_by_side, uint8_images, write_image
from utils.runtime import (add_precision_flags, autocast, keep_freed_memory, resolve_device, set_precision,
                           start_to_host, to_device)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--underexposed_path", default="dataset/CASIA-Test/underexposed", help="folder of low-light images")
    p.add_argument("--enhanced_path", default="dataset/CASIA-Test/SOTAs/Ours", help="output folder")
    p.add_argument("--enhance_checkpoint", default="checkpoint/Low-FaceNet.pth")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch_size", type=int, default=1, help="images of equal size enhanced together (1, as "
                   "published, is the fastest on CPUs; 4-16 on GPUs)")
    p.add_argument("--num_workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--writers", type=int, default=os.cpu_count() or 1, help="image encoding processes (threads where "
                   "processes cannot be forked: macOS, Windows)")
    p.add_argument("--tile", type=int, default=512, help="images larger than tile x tile go through in tiles "
                   "(bounded memory: about 1.5 GiB at 512 on a CPU; the result does not depend on it)")
    add_precision_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--comparison_path", default=None, help="also write input | enhanced | normal pictures (PNG) here")
    p.add_argument("--normal_path", default=None, help="normal-light images for the pictures (default: the "
                   "input folder's sibling normal/, when there is one)")
    return p.parse_args(argv)


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


def save(enhanced, path, image=None, comparison=None, normal=None):
    """Write the enhanced image (HxWx3 uint8) and, given `comparison`, the picture image | enhanced | normal (when the
    file `normal` exists). Runs in the writer processes."""
    write_image(enhanced, path)
    if comparison:
        panels = [image, enhanced] + ([read_image(normal)] if os.path.isfile(normal) else [])
        write_image(side_by_side(panels), comparison)


def writer_pool(workers):
    """Encoders of the output images: processes, forked before the reading threads start, where the system forks
    (PIL's encoders stopped scaling at one thread), else threads."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return ThreadPoolExecutor(workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    pool.submit(int).result()  # forks every worker now
    return pool


def check_folders(src, dst):
    """Refuse an output folder that is the input folder or inside it."""
    if not os.path.isdir(src):
        sys.exit(f"error: {src}: input folder not found")
    src_real, dst_real = os.path.realpath(src), os.path.realpath(dst)
    if os.path.commonpath([src_real, dst_real]) == src_real:
        sys.exit(f"error: {dst}: the output folder must not be the input folder or inside it ({src})")


def main(argv=None):
    args = parse_args(argv)
    check_folders(args.underexposed_path, args.enhanced_path)
    files, others = list_images(args.underexposed_path)
    for rel in others:
        print(f"skipped {os.path.join(args.underexposed_path, rel)}: not an image file")
    if not files:
        sys.exit(f"error: no images found in {args.underexposed_path}")
    device = resolve_device(args.device)
    set_precision(args.precision)
    keep_freed_memory()
    try:
        model = nets.load("enhance", args.enhance_checkpoint, device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    out = lambda rel: os.path.join(args.enhanced_path, rel)
    todo = [rel for rel in files if args.overwrite or not os.path.exists(out(rel))]
    existing = len(files) - len(todo)
    normal_dir = args.normal_path or os.path.join(os.path.dirname(os.path.abspath(args.underexposed_path)), "normal")
    print(f"weights: {args.enhance_checkpoint}")
    print(f"enhancing {len(todo)} images from {args.underexposed_path} into {args.enhanced_path} on {device}"
          + (f" ({existing} already there, kept; --overwrite replaces them)" if existing else ""))

    writer = writer_pool(max(1, min(args.writers, len(todo))))  # before the reading threads start
    loader = read_ahead(ImageFiles(args.underexposed_path, todo), args.batch_size, args.num_workers)
    failed, pending = [], []

    def finish(job_count):  # collect the oldest writes (bounding memory) and record write errors
        nonlocal written
        for rel, job in pending[:job_count]:
            try:
                job.result()
                written += 1
            except (OSError, ImageReadError) as e:
                failed.append(f"{out(rel)}: cannot write ({e})")
                tqdm.write(f"failed {failed[-1]}")
        del pending[:job_count]

    def deliver(host, wait, group):  # once the batch is on the host, hand its images to the writers
        wait()
        for (rel, image), enhanced in zip(group, host.numpy()):
            extra = {}
            if args.comparison_path:
                extra = dict(image=image, normal=os.path.join(normal_dir, rel),
                             comparison=os.path.join(args.comparison_path, os.path.splitext(rel)[0] + ".png"))
            pending.append((rel, writer.submit(save, enhanced, out(rel), **extra)))

    written, in_flight = 0, deque()
    with writer, tqdm(total=len(todo), unit="img") as bar:
        for batch in loader:
            by_size = {}
            for rel, image in batch:
                if isinstance(image, str):
                    failed.append(image)
                    tqdm.write(f"failed {image}")
                else:
                    by_size.setdefault(image.shape, []).append((rel, image))
            for group in by_size.values():  # uint8 to the device, float and back to uint8 there: 4x less to copy
                x = to_device(torch.from_numpy(np.stack([image for _, image in group])), device)
                with autocast(device, args.precision):
                    r = enhance(model, x.permute(0, 3, 1, 2).float().div_(255), tile=args.tile).float()
                in_flight.append((*start_to_host(uint8_images(r).contiguous()), group))
            while len(in_flight) > 1:  # the device computes this batch while the host hands on the one before
                deliver(*in_flight.popleft())
            finish(max(0, len(pending) - 4 * args.batch_size))
            bar.update(len(batch))
        while in_flight:
            deliver(*in_flight.popleft())
        finish(len(pending))
    print(f"done: {written} written, {existing} kept, {len(failed)} failed, {len(others)} non-image files passed over")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
