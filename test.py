"""Enhance every image of a folder with a Low-FaceNet checkpoint; names, extensions and sub-folders are kept.

    python test.py --underexposed_path dataset/CASIA-Test/underexposed \
                   --enhanced_path dataset/CASIA-Test/SOTAs/Ours --enhance_checkpoint checkpoint/Low-FaceNet.pth

Images go in whole (no resizing; very large ones in overlapping tiles with the same result) and are written
as torchvision's save_image writes them. With --comparison_path, a side-by-side picture (input | enhanced |
normal, when the normal-light image exists) is also written for each image. The output folders must lie apart
from the folders read and from each other. Nothing is deleted; existing outputs are kept unless --overwrite, and
a rerun writes every output still missing (an interrupted run resumes by running the same command again). Each
output folder records what made it (.made_by.json: the weights' sha256, --precision, the input folder); a run
with other weights or settings into it stops with one line naming --overwrite, which then replaces the outputs
(only files this command writes). Entries that are not images (.DS_Store, Thumbs.db, .txt, hidden or unlistable
folders) are passed over with a line each; an image that cannot be read, or an output that cannot be written, gets
a line and the others are still written. Float images are read from 0..1 when their values lie in 0..1, else from
0..255; an input's transparency (alpha) is kept in its output. Images of any size that memory holds are read
(--max_pixels); one larger than a tile shows its tiles in a second progress bar. Ctrl-C, or a writer process
killed (by the system, for lack of memory), ends the run with one line and the summary: every file written is
whole, and the same command writes the rest. Exit status 1 when an image failed, an output asked for is missing
at the end, or the folder holds no image; 130 after Ctrl-C.
"""
import os
import signal
import sys

from utils.checks import (ArgumentParser, add_precision_flags, check_checkpoints, check_paths, device_name,
                          escape_unprintable_names, integer)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--underexposed_path", default="dataset/CASIA-Test/underexposed", help="folder of low-light images")
    p.add_argument("--enhanced_path", default="dataset/CASIA-Test/SOTAs/Ours", help="output folder")
    p.add_argument("--enhance_checkpoint", default="checkpoint/Low-FaceNet.pth", help="the published weights, or an "
                   "epochN.pth or best.pth written by train.py")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch_size", type=integer(1), default=1, help="images of equal size enhanced together (1, as "
                   "published, is the fastest on CPUs; 4-16 on GPUs)")
    p.add_argument("--num_workers", type=integer(0), default=max(2, (os.cpu_count() or 2) // 2),
                   help="image decoding threads (default: half the CPUs, at least 2)")
    p.add_argument("--writers", type=integer(1), default=os.cpu_count() or 1, help="image encoding processes "
                   "(threads where processes cannot be forked: macOS, Windows; on a CPU, images larger than a tile "
                   "are encoded by one thread of the main process, which needs no copy of them)")
    p.add_argument("--tile", type=integer(1), default=512, help="images larger than tile x tile go through in tiles "
                   "(the result does not depend on it). Peak memory on a CPU: about 1.6 GiB at 512 (0.5 GiB less at "
                   "256) plus 10 bytes per pixel of the largest image: 2.5 GiB for 10000x10000; each image read "
                   "ahead (--num_workers) adds 3 bytes per pixel")
    p.add_argument("--max_pixels", type=integer(0), default=0, help="largest image read, in pixels (Pillow's own "
                   "limit, 179 million, is lifted); 0: as large as this machine's memory holds while it is "
                   "enhanced (see --tile). A larger one gets a line saying how much memory it needs")
    add_precision_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files, also in a folder "
                   "made with other weights or settings (its record, .made_by.json, says which)")
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
    check_checkpoints([("--enhance_checkpoint", args.enhance_checkpoint, "Low-FaceNet.pth")])


def interrupted_at_start(signum, frame):
    """Ctrl-C before the first image is enhanced: nothing to finish, one line and exit status 130."""
    print("interrupted (Ctrl-C) before any image was enhanced", file=sys.stderr)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch
    signal.signal(signal.SIGINT, interrupted_at_start)  # main() takes Ctrl-C over when the images start

import glob  # noqa: E402
import multiprocessing  # noqa: E402
import threading  # noqa: E402
from collections import deque  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor  # noqa: E402
from concurrent.futures.process import BrokenProcessPool  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import nets  # noqa: E402
from nets.enhance import RECEPTIVE_RADIUS, enhance_uint8  # noqa: E402
from utils.checkpoint import CheckpointError, weights_sha256  # noqa: E402
from utils.data import read_ahead  # noqa: E402
from utils.images import (PILLOW_PIXEL_LIMIT, ImageReadError, ImageTooLarge, list_images, read_image,  # noqa: E402
                          side_by_side, write_image)
from utils.output_record import claim_folder, finish_folder  # noqa: E402
from utils.runtime import check_device, keep_freed_memory, memory_bytes, start_device, start_to_host  # noqa: E402

# Peak resident memory of a run on a CPU, in bytes: torch and the other libraries once imported (0.7 GiB with torch
# 2.14's CUDA build); decoding bands and threads; the network's activations per pixel of a tile's window (float32,
# 64 to 128 channels); and per pixel of the image enhanced: 3 bytes in and 3 out as uint8 and 4 while it is encoded
# (PIL's RGBX), or 4 + 3 while it is read. tests/test_outputs_and_images.py checks all but the first.
MEMORY_OF_IMPORTS, MEMORY_OF_RUN, MEMORY_PER_WINDOW_PIXEL, MEMORY_PER_PIXEL = 0.8 * 2 ** 30, 64 * 2 ** 20, 2800, 10


def memory_needed(pixels, tile):
    """Bytes a run needs at most on a CPU to enhance an image of `pixels` pixels in tiles of `tile`: about 1.6 GiB
    at 512 plus 10 bytes per pixel (2.5 GiB for 10000x10000)."""
    window = min(pixels, (tile + 2 * RECEPTIVE_RADIUS) ** 2)
    return MEMORY_OF_IMPORTS + MEMORY_OF_RUN + MEMORY_PER_WINDOW_PIXEL * window + MEMORY_PER_PIXEL * pixels


def largest_image(memory, tile):
    """The most pixels an image may have for memory_needed to stay within `memory` bytes (at least 1)."""
    window = (tile + 2 * RECEPTIVE_RADIUS) ** 2
    if memory >= memory_needed(window, tile):
        return window + int((memory - memory_needed(window, tile)) / MEMORY_PER_PIXEL)
    return max(1, int((memory - memory_needed(0, tile)) / (MEMORY_PER_WINDOW_PIXEL + MEMORY_PER_PIXEL)))


class ImageFiles:
    """(relative path, (HxWx3 uint8 array, HxW alpha array or None) or an error message) for each file; images of
    more than max_pixels are refused before they are decoded, with a line saying how much memory they need."""

    def __init__(self, root, files, max_pixels, limit, tile, say):
        self.root, self.files, self.tile, self.say = root, files, tile, say
        self.max_pixels, self.limit = max_pixels, limit  # limit: what sets max_pixels, in words

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = os.path.join(self.root, self.files[i])
        try:
            return self.files[i], read_image(path, self.max_pixels, with_alpha=True, say=self.say)
        except ImageTooLarge as e:
            w, h = e.size
            need = memory_needed(e.pixels, self.tile) / 2 ** 30
            return self.files[i], (f"{path}: a {w}x{h} image needs about {need:.1f} GiB of memory to enhance, more "
                                   f"than {self.limit} allows; --max_pixels {e.pixels} reads it anyway")
        except ImageReadError as e:
            return self.files[i], str(e)


def save(enhanced, output=None, image=None, comparison=None, normal=None, alpha=None, temporary=".tmp-", fsync=False):
    """Write the enhanced image (HxWx3 uint8; with `alpha`, the input's, as RGBA) to `output` and the picture
    image | enhanced | normal (when the file `normal` exists) to `comparison`, each unless None, through temporary
    files whose names start with `temporary` (fsync: see utils.checkpoint.atomic_write). Runs in the writers;
    returns a line per file not written."""
    errors = []
    for path in (p for p in (output, comparison) if p):
        try:
            if path == output:
                write_image(enhanced if alpha is None else np.dstack([enhanced, alpha]), path, temporary, fsync)
            else:
                write_image(side_by_side([image, enhanced] + ([read_image(normal)] if os.path.isfile(normal) else [])),
                            path, temporary, fsync)
        except ImageReadError as e:
            errors.append(f"{path}: not written ({e})")
        except (OSError, ValueError) as e:
            errors.append(f"{path}: cannot write ({e})")
    return errors


def writer_pool(workers):
    """Encoders of the output images: processes, forked before the device and the reading threads start, where the
    system forks (PIL's encoders stopped scaling at one thread), else threads. The processes leave Ctrl-C to the
    main one, which lets the images being written finish."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return ThreadPoolExecutor(workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=signal.signal,
                               initargs=(signal.SIGINT, signal.SIG_IGN))
    pool.submit(int).result()  # forks every worker now
    return pool


def stop_writers(writer, tiled_writer, pending, collect, temporary):
    """After Ctrl-C or a writer's death: the writes under way finish (a second Ctrl-C is ignored meanwhile), the
    queued ones are dropped, collect(errors, rel, paths) is called for each write that finished, and the temporary
    files of writers that died (names starting with `temporary`) are removed."""
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    for pool in (writer, tiled_writer):
        pool.shutdown(wait=True, cancel_futures=True)
    if main_thread:
        signal.signal(signal.SIGINT, before)
    for rel, paths, job in pending:
        if job.done() and not job.cancelled() and job.exception() is None:
            collect(job.result(), rel, paths)
    for folder in {os.path.dirname(p) for _, paths, _ in pending for p in paths}:
        for leftover in glob.glob(os.path.join(glob.escape(folder), glob.escape(temporary) + "*")):
            os.remove(leftover)


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    escape_unprintable_names()
    check_device(args.device)  # here, before anything is written; it starts once the writer processes have forked
    files, passed_over = list_images(args.underexposed_path, say=print)
    if not files:
        sys.exit(f"error: no images found in {args.underexposed_path}")
    keep_freed_memory()
    try:  # on the host: its hash names what made the output folders; the device starts after the writers fork
        model = nets.load("enhance", args.enhance_checkpoint)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
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
    normal_dir = normal_folder(args)

    # ------------------------------------------------ what made each output folder: the same settings, or --overwrite
    made_by = {"command": "test.py", "weights_sha256": weights_sha256(model), "precision": args.precision,
               "input": os.path.realpath(args.underexposed_path)}
    folders = [(args.enhanced_path, made_by, "--enhanced_path", set(files))]
    if args.comparison_path:
        folders.append((args.comparison_path, {**made_by, "normal": os.path.realpath(normal_dir)}, "--comparison_path",
                        {os.path.splitext(rel)[0] + ".png" for rel in files}))
    details = {"weights": os.path.abspath(args.enhance_checkpoint)}
    replacing = [claim_folder(label, folder, settings, args.overwrite, outputs, details)
                 for folder, settings, label, outputs in folders]

    wanted = {rel: [p for p in paths if (args.overwrite or not os.path.isfile(p)) and len(sharing.get(p, [])) < 2]
              for rel, paths in asked.items()}
    todo = [rel for rel in files if wanted[rel]]
    existing = len(files) - len(todo)
    # the writer processes fork before the device starts (a process forked after CUDA starts cannot use it) and
    # before the reading threads start
    writer = writer_pool(max(1, min(args.writers, len(todo))))
    device = start_device(args.device, args.precision)
    model = model.to(device)
    print(f"weights: {args.enhance_checkpoint}")
    print(f"enhancing {len(todo)} images from {args.underexposed_path} into {args.enhanced_path} on {device}"
          + (f" ({existing} already there, kept; --overwrite replaces them)" if existing else ""))

    # ------------------------------------------------ enhance, and write in the writers as each batch comes back
    tiled_writer = ThreadPoolExecutor(1)  # on a CPU, images in tiles: no copy to a writer process (3 bytes a pixel)
    temporary = f".tmp-test-{os.getpid()}-"  # this run's temporary files: a writer killed leaves one behind
    memory = memory_bytes()  # --max_pixels 0: what it holds (where it cannot be known, Pillow's limit)
    max_pixels = args.max_pixels or (largest_image(memory, args.tile) if memory else PILLOW_PIXEL_LIMIT)
    limit = (f"--max_pixels {args.max_pixels}" if args.max_pixels else f"this machine's memory ({memory / 2 ** 30:.1f} "
             "GiB)" if memory else f"the default limit of {PILLOW_PIXEL_LIMIT} pixels")
    loader = read_ahead(ImageFiles(args.underexposed_path, todo, max_pixels, limit, args.tile, tqdm.write),
                        args.batch_size, args.num_workers)
    pending, written_paths = deque(), set()

    def collect(errors, rel, paths):  # a write's outcome: its lines, and the files it wrote
        nonlocal written
        for message in errors:
            fail(rel, message)
        written += not errors
        written_paths.update(p for p in paths if not any(m.startswith(f"{p}: ") for m in errors))

    def finish(job_count):  # collect the oldest writes (bounding memory) and record write errors
        for _ in range(job_count):
            rel, paths, job = pending[0]
            collect(job.result(), rel, paths)
            pending.popleft()

    def deliver(host, wait, group):  # once the batch is on the host, hand its images to the writers
        wait()
        for (rel, (image, alpha)), enhanced in zip(group, host.numpy()):
            output = out(rel) if out(rel) in wanted[rel] else None
            comparison = picture(rel) if args.comparison_path and picture(rel) in wanted[rel] else None
            pool = tiled_writer if device.type == "cpu" and max(enhanced.shape[:2]) > args.tile else writer
            pending.append((rel, [p for p in (output, comparison) if p], pool.submit(
                save, enhanced, output, image if comparison else None, comparison, os.path.join(normal_dir, rel),
                alpha, temporary, args.fsync)))

    tile_bar = None

    def tile_progress(done, count):  # a second bar for the tiles of an image larger than a tile
        nonlocal tile_bar
        tile_bar = tile_bar or tqdm(total=count, unit="tile", leave=False)
        tile_bar.update(1)
        if done == count:
            tile_bar.close()
            tile_bar = None

    written, in_flight, stopped = 0, deque(), None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C now stops the loop below (KeyboardInterrupt)
    with writer, tiled_writer:
        try:
            with tqdm(total=len(todo), unit="img") as bar:
                for batch in loader:
                    good = []
                    for rel, image in batch:
                        if isinstance(image, str):
                            fail(rel, image)
                        else:
                            good.append((rel, image))
                    for index, uint8 in enhance_uint8(model, [image for _, (image, _) in good], device, args.tile,
                                                      args.precision, tile_progress):
                        in_flight.append((*start_to_host(uint8, share=True), [good[i] for i in index]))
                    while len(in_flight) > 1:  # the device computes this batch while the host hands on the one before
                        deliver(*in_flight.popleft())
                    finish(max(0, len(pending) - 4 * args.batch_size))
                    bar.update(len(batch))
                while in_flight:
                    deliver(*in_flight.popleft())
                finish(len(pending))
        except KeyboardInterrupt:
            stopped = "interrupted (Ctrl-C)", 128 + signal.SIGINT
        except BrokenProcessPool:
            stopped = "a writer process died (killed, as the system does when memory runs out)", 1
        if stopped:
            stop_writers(writer, tiled_writer, pending, collect, temporary)
            if tile_bar is not None:
                tile_bar.close()
            print(f"stopped: {stopped[0]}; every file written is whole, and the same command writes the rest")

    # ------------------------------------------------ summary
    missing = [(rel, path) for rel in files for path in asked[rel] if not os.path.isfile(path)]
    for rel, path in missing if not stopped else ():
        if rel not in failed_images:  # the others are named above
            print(f"missing {path}")
    print(f"done: {written} written, {existing} kept, {len(failed)} failed, {len(passed_over)} other entries passed "
          f"over" + (f"; {len(missing)} of the {sum(map(len, asked.values()))} files asked for are missing" if missing
                     else ""))
    for (folder, settings, _, _), marked in zip(folders, replacing):
        paths = [path for rel in files for path in asked[rel] if path.startswith(os.path.join(folder, ""))]
        if marked and not stopped and all(p in written_paths or not os.path.isfile(p) for p in paths):
            finish_folder(folder, settings, details)
    if stopped:
        return stopped[1]
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
