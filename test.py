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
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

import nets
from nets.enhance import enhance_images
from utils.checkpoint import CheckpointError
from utils.data import read_ahead
from utils.images import ImageReadError, list_images, read_image, side_by_side, to_tensor, to_uint8, write_image
from utils.runtime import keep_freed_memory, resolve_device


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--underexposed_path", default="dataset/CASIA-Test/underexposed", help="folder of low-light images")
    p.add_argument("--enhanced_path", default="dataset/CASIA-Test/SOTAs/Ours", help="output folder")
    p.add_argument("--enhance_checkpoint", default="checkpoint/Low-FaceNet.pth")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch_size", type=int, default=1, help="images of equal size enhanced together (1, as "
                   "published, is the fastest on CPUs; 4-16 on GPUs)")
    p.add_argument("--num_workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--tile", type=int, default=512, help="images larger than tile x tile go through in tiles "
                   "(bounded memory: about 1.5 GiB at 512 on a CPU; the result does not depend on it)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (for GPUs; pixels differ from float32 by a "
                   "few levels of 255)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--comparison_path", default=None, help="also write input | enhanced | normal pictures (PNG) here")
    p.add_argument("--normal_path", default=None, help="normal-light images for the pictures (default: the "
                   "input folder's sibling normal/, when there is one)")
    return p.parse_args(argv)


class ImageFiles:
    """(relative path, 3xHxW tensor or an error message) for each file."""

    def __init__(self, root, files):
        self.root, self.files = root, files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return self.files[i], to_tensor(read_image(os.path.join(self.root, self.files[i])))
        except ImageReadError as e:
            return self.files[i], str(e)


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

    def save(rel, x, enhanced):
        write_image(enhanced, out(rel))
        if args.comparison_path:
            panels = [to_uint8(x), enhanced]
            normal = os.path.join(normal_dir, rel)
            if os.path.isfile(normal):
                panels.append(read_image(normal))
            write_image(side_by_side(panels), os.path.join(args.comparison_path, os.path.splitext(rel)[0] + ".png"))

    written = 0
    with ThreadPoolExecutor(max_workers=2) as writer, tqdm(total=len(todo), unit="img") as bar:
        for batch in loader:
            good = []
            for rel, x in batch:
                if isinstance(x, str):
                    failed.append(x)
                    tqdm.write(f"failed {x}")
                else:
                    good.append((rel, x))
            for (rel, x), img in zip(good, enhance_images(model, [x for _, x in good], device, args.tile, args.amp)):
                pending.append((rel, writer.submit(save, rel, x, to_uint8(img))))
            finish(max(0, len(pending) - 4 * args.batch_size))
            bar.update(len(batch))
        finish(len(pending))
    print(f"done: {written} written, {existing} kept, {len(failed)} failed, {len(others)} non-image files passed over")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
