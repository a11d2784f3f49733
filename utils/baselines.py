"""Training-free low-light enhancers to compare against: gamma correction, histogram equalisation and CLAHE of the
luminance (OpenCV), and LIME (Guo, Li, Ling, "LIME: Low-Light Image Enhancement via Illumination Map Estimation",
IEEE TIP 2017).

    python -m utils.baselines --dataset_name samples --methods gamma he clahe lime
    python -m utils.baselines --dataset_name CASIA-Test --methods lime --dataset_root dataset

Reads dataset/NAME/underexposed and writes dataset/NAME/SOTAs/METHOD with the same names, extensions and
sub-folders, through the project's atomic image writing (never over an input: the folders are checked apart before
any work). Existing outputs are kept unless --overwrite, so an interrupted run resumes by running it again; each
output folder records the method's settings (.made_by.json), and a folder holding outputs of other settings is
refused in one line unless --overwrite. Entries
that are not images are passed over with a line each; an image that cannot be read or written gets a line and the
others are still written. Exit status 1 when an image failed or the folder holds no image. Score the results with
`python eval.py --dataset_name NAME --method_name all`.
"""
import os
import sys

from utils.checks import ArgumentParser, check_paths, escape_unprintable_names, folder_name, integer, number

METHODS = ("gamma", "he", "clahe", "lime")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--dataset_name", type=folder_name, required=True, help="reads dataset/NAME/underexposed")
    p.add_argument("--dataset_root", default="dataset", help="the folder of the data sets")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="each writes dataset/NAME/SOTAs/METHOD")
    p.add_argument("--gamma", type=number(0, above=True), default=2.2, help="gamma: out = in ** (1 / GAMMA)")
    p.add_argument("--clahe_clip", type=number(0, above=True), default=2.0, help="CLAHE's clip limit")
    p.add_argument("--clahe_grid", type=integer(1), default=8, help="CLAHE's tiles per side")
    p.add_argument("--lime_alpha", type=number(0, above=True), default=0.15, help="LIME's smoothness weight")
    p.add_argument("--lime_sigma", type=number(0, above=True), default=2.0, help="LIME's Gaussian of strategy III")
    p.add_argument("--lime_gamma", type=number(0, above=True), default=0.8, help="LIME's gamma of the illumination")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (also those of other "
                   "settings: without it a folder holding them is refused)")
    return p.parse_args(argv)


def folders(args):
    """(the low-light input folder, {method: its output folder})."""
    dataset_dir = os.path.join(args.dataset_root, args.dataset_name)
    return (os.path.join(dataset_dir, "underexposed"),
            {m: os.path.join(dataset_dir, "SOTAs", m) for m in dict.fromkeys(args.methods)})


def check_args(args):
    """Exit with one line, before any work, when the folders cannot work together (utils.checks.check_paths)."""
    source, outputs = folders(args)
    if not os.path.isdir(source):
        sys.exit(f"error: {source}: folder not found (the low-light images of --dataset_name); fetch the data set "
                 f"with `python -m utils.download --datasets {args.dataset_name}`, or make one with utils.lowlight")
    check_paths(reads=[("the low-light images", source)],
                writes=[(f"the outputs of {m}", d) for m, d in outputs.items()])


if __name__ == "__main__":
    check_args(parse_args())  # --help and argument errors answer here, before the imports below load torch and cv2

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sparse  # noqa: E402
from scipy.sparse.linalg import spsolve  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.images import ImageReadError, list_images, read_image, write_image  # noqa: E402
from utils.output_record import claim_folder, finish_folder  # noqa: E402

# -----------------------------------------------------------------------------
# the enhancers: HxWx3 uint8 RGB in, HxWx3 uint8 RGB out


def gamma_correct(image, gamma=2.2):
    """255 * (x / 255) ** (1 / gamma), rounded."""
    return np.rint(255 * (image / 255.0) ** (1 / gamma)).astype(np.uint8)


def _on_luminance(image, transform):
    """`transform` (a uint8 channel -> uint8 channel) applied to the Y of YCrCb; chroma kept."""
    ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
    ycrcb[..., 0] = transform(np.ascontiguousarray(ycrcb[..., 0]))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)


def equalize(image):
    """Histogram equalisation of the luminance (cv2.equalizeHist on Y of YCrCb)."""
    return _on_luminance(image, cv2.equalizeHist)


def clahe(image, clip=2.0, grid=8):
    """Contrast-limited adaptive histogram equalisation of the luminance (cv2.createCLAHE on Y of YCrCb)."""
    return _on_luminance(image, cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid)).apply)


def _forward_differences(h, w):
    """(D_h, D_v): sparse (HW x HW) forward differences of a row-major HxW map, x[p + 1] - x[p] and x[p + W] - x[p],
    with zero rows at the last column (D_h) and the last row (D_v)."""
    n = h * w
    keep_h = np.ones((h, w))
    keep_h[:, -1] = 0
    keep_v = np.ones((h, w))
    keep_v[-1, :] = 0
    keep_h, keep_v = keep_h.ravel(), keep_v.ravel()
    d_h = sparse.diags([-keep_h, keep_h[:-1]], [0, 1], shape=(n, n), format="csr")
    d_v = sparse.diags([-keep_v, keep_v[:n - w]], [0, w], shape=(n, n), format="csr")
    return d_h, d_v


def lime_weights(t_hat, sigma=2.0, eps=1e-3):
    """(w_h, w_v): LIME's weights of strategy III divided by the gradient magnitude (its equation 19's w~_d), HxW:
    W_d(x) = sum_y G(x, y) / (|sum_y G(x, y) grad_d t_hat(y)| + eps), w~_d(x) = W_d(x) / (|grad_d t_hat(x)| + eps),
    with G a normalised Gaussian of `sigma` over a (2 ceil(3 sigma) + 1)^2 window, mirrored at the borders (reflect
    without repeating the edge), and forward differences that are zero at the last column / row."""
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    weights = []
    for axis in (1, 0):
        grad = np.diff(t_hat, axis=axis, append=np.take(t_hat, [-1], axis=axis))  # zero at the last column / row
        smoothed = cv2.sepFilter2D(grad, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)
        weights.append(1 / (np.abs(smoothed) + eps) / (np.abs(grad) + eps))
    return weights[0], weights[1]


def lime_system(t_hat, alpha=0.15, sigma=2.0, eps=1e-3):
    """The sparse matrix A of LIME's sped-up solver (its equation 19): (I + alpha sum_d D_d^T Diag(w~_d) D_d) t =
    t_hat, for a row-major HxW t."""
    h, w = t_hat.shape
    d_h, d_v = _forward_differences(h, w)
    w_h, w_v = lime_weights(t_hat, sigma, eps)
    smooth = d_h.T @ sparse.diags(w_h.ravel()) @ d_h + d_v.T @ sparse.diags(w_v.ravel()) @ d_v
    return (sparse.identity(h * w, format="csc") + alpha * smooth).tocsc()


def lime_illumination(image, alpha=0.15, sigma=2.0, eps=1e-3):
    """LIME's refined illumination map T (HxW float64 in about 0..1) of an HxWx3 uint8 image: the initial map
    t_hat = max over R, G, B (in 0..1), refined by its structure-aware objective, whose linear system (lime_system,
    symmetric positive definite) is solved with scipy's sparse direct solver (SuperLU, minimum-degree ordering):
    about 1 s at 256x256, 6 s at 512x512 and 40 s at 1024x1024 on a CPU core, its cost growing faster than the
    pixel count (conjugate gradients converge too slowly here: the weights span six orders of magnitude)."""
    t_hat = image.max(axis=2) / 255.0
    solution = spsolve(lime_system(t_hat, alpha, sigma, eps), t_hat.ravel(), permc_spec="MMD_AT_PLUS_A")
    return solution.reshape(t_hat.shape)


def lime(image, alpha=0.15, sigma=2.0, gamma=0.8, eps=1e-3):
    """LIME, with the paper's parameters as defaults (alpha 0.15, sigma 2 of strategy III, gamma 0.8, epsilon
    1e-3): each channel of the image (0..1) divided by T ** gamma (T at least eps), clipped to 0..1 and rounded.
    LIME's optional BM3D denoising step is not applied."""
    t = np.maximum(lime_illumination(image, alpha, sigma, eps), eps) ** gamma
    return np.rint(np.clip(image / 255.0 / t[..., None], 0, 1) * 255).astype(np.uint8)


def settings(args, method):
    """What an output of `method` depends on: recorded in its folder (utils.output_record), so that other settings
    never mix with an earlier run's outputs."""
    params = {"gamma": ["gamma"], "he": [], "clahe": ["clahe_clip", "clahe_grid"],
              "lime": ["lime_alpha", "lime_sigma", "lime_gamma"]}[method]
    source, _ = folders(args)
    return {"command": "utils.baselines", "method": method, "input": os.path.realpath(source),
            **{name: getattr(args, name) for name in params}}


def enhancers(args):
    """{method: HxWx3 uint8 -> HxWx3 uint8} with the run's parameters."""
    table = {"gamma": lambda im: gamma_correct(im, args.gamma), "he": equalize,
             "clahe": lambda im: clahe(im, args.clahe_clip, args.clahe_grid),
             "lime": lambda im: lime(im, args.lime_alpha, args.lime_sigma, args.lime_gamma)}
    return {m: table[m] for m in dict.fromkeys(args.methods)}

# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    escape_unprintable_names()
    source, outputs = folders(args)
    files, _ = list_images(source, say=print)
    if not files:
        sys.exit(f"error: no images found in {source}")
    methods = enhancers(args)
    replacing = {m: claim_folder(f"the outputs of {m}", outputs[m], settings(args, m), args.overwrite, set(files))
                 for m in methods}
    wanted = {rel: [m for m in methods if args.overwrite or not os.path.isfile(os.path.join(outputs[m], rel))]
              for rel in files}
    todo = [rel for rel in files if wanted[rel]]
    kept = sum(len(methods) - len(wanted[rel]) for rel in files)
    print(f"enhancing {len(todo)} images of {source} with {', '.join(methods)} into "
          f"{os.path.dirname(next(iter(outputs.values())))}"
          + (f" ({kept} outputs already there, kept; --overwrite replaces them)" if kept else ""))
    written, failed = 0, 0
    for rel in tqdm(todo, unit="img"):
        try:
            image = read_image(os.path.join(source, rel))
        except ImageReadError as e:
            tqdm.write(f"failed {e}")
            failed += 1
            continue
        for method in wanted[rel]:
            out = os.path.join(outputs[method], rel)
            try:
                write_image(methods[method](image), out)
                written += 1
            except (OSError, ValueError) as e:
                tqdm.write(f"failed {out}: cannot write ({e})")
                failed += 1
    for m in methods:
        if replacing[m] and not failed:
            finish_folder(outputs[m], settings(args, m))
    print(f"done: {written} written, {kept} kept, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every output written so far is whole (atomic): running the command again resumes
        print("interrupted: the outputs written so far are kept; run the same command again to finish", file=sys.stderr)
        sys.exit(130)
