"""Download the published files: the pre-trained models into checkpoint/, named data sets into dataset/NAME/.

    python -m utils.download                                # the five published checkpoints
    python -m utils.download --datasets CASIA-Test LFW      # and these data sets, in the published layout
    python -m utils.download --models_url https://drive.google.com/drive/folders/ID --datasets_url ...

Each file goes to a hidden temporary name beside its destination (.NAME.part) and is checked there: a checkpoint
must load strictly into its network with weights_only=True (nets.load), an image must decode, an archive must pass
its CRC test. Only a file that passes is renamed to its name; one that fails is kept as NAME.bad (replacing an
earlier NAME.bad), and a killed download leaves only the temporary. A file already in place is never overwritten:
one that passes its check is kept ("already there"), one that fails is reported and left alone. Every file that
could not be had gets one line saying what to do by hand; the exit status is 1 when any file is missing at the end.
"""
import os
import shutil
import sys
import zipfile

from utils.checks import ArgumentParser

# The authors' Google Drive, as linked from the published Low-FaceNet repository's README. NOT KNOWN to this
# copy, which was written offline: every entry is None and nothing is guessed. Paste the two folder URLs of the
# published README here, or pass --models_url / --datasets_url. A file id, where known, fetches that file without
# listing its folder.
DRIVE = {
    "models": None,  # folder URL, "pre-trained models": the five files below
    "datasets": None,  # folder URL, the data sets: a sub-folder NAME/ or an archive NAME.zip per set
    "Low-FaceNet.pth": None,  # file ids: none known, each file is found by its name in the models folder
    "facenet_mobilenet.pth": None,
    "Retinaface_mobilenet0.25.pth": None,
    "best_deeplabv3plus_mobilenet_lapa_epoch96.pth": None,
    "unique.pt": None,
}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--datasets", nargs="*", default=[], metavar="NAME",
                   help="data sets to fetch into dataset/NAME, e.g. CASIA-Test LFW (LaPa-Face, Contrast, LaPa-Test, "
                        "CelebA-Test)")
    p.add_argument("--models_url", default=DRIVE["models"], help="the Drive folder of the pre-trained models")
    p.add_argument("--datasets_url", default=DRIVE["datasets"], help="the Drive folder of the data sets")
    p.add_argument("--checkpoint_root", default="checkpoint", help="where the checkpoints go")
    p.add_argument("--dataset_root", default="dataset", help="where the data sets go (DATASET_ROOT/NAME)")
    return p.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the imports below load torch

import gdown  # noqa: E402
import requests  # noqa: E402
from tqdm import tqdm  # noqa: E402

import nets  # noqa: E402
from utils.checkpoint import atomic_write  # noqa: E402
from utils.images import IMAGE_EXTENSIONS, read_image  # noqa: E402

MODELS = ("enhance", "facenet_mobilenet", "retinaface", "deeplab", "unique")  # keys of nets.FORMATS on the Drive
PUBLISHED = "the Google Drive folder linked from the published Low-FaceNet repository's README"


def fetch(source, dest):
    """The transport: download one Drive file (an id or a URL) to the path dest, with gdown's progress bar; gdown
    writes dest.partXXXXXXXX.part first and resumes it after an interrupted run."""
    if source.startswith("http"):
        gdown.download(url=source, output=dest, resume=True)
    else:
        gdown.download(id=source, output=dest, resume=True)


def list_folder(url):
    """{path inside the Drive folder: file id} of every file below it, without downloading them."""
    return {f.path.replace(os.sep, "/"): f.id for f in gdown.download_folder(url=url, skip_download=True, quiet=True)}


def why(error):
    """What went wrong with a transfer, in a few words and the error's own text on one line."""
    if isinstance(error, (gdown.exceptions.DownloadError, requests.HTTPError)):
        kind = "Google Drive refused (quota, permission or 'Too many users'; try again later)"
    elif isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        kind = "no network or the connection failed"
    else:
        kind = "download failed"
    return f"{kind}: {' '.join(str(error).split())[:120] or type(error).__name__}"


def problem(path, check):
    """None when check(path) passes, else its error in one line without the path."""
    try:
        check(path)
        return None
    except Exception as e:  # whatever a broken or foreign file makes the check raise
        return " ".join(str(e).replace(f"{path}: ", "").split()) or type(e).__name__


def get(source, dest, check):
    """Put the Drive file `source` at `dest` unless a file is there. Returns (state, line), state one of:
    'there' (kept, passes its check), 'downloaded', 'bad' (there, fails its check, left alone), 'refused' (the download
    fails its check: kept as dest.bad), 'failed' (no transfer), 'unknown' (source is None)."""
    if os.path.exists(dest):
        p = problem(dest, check)
        if p is None:
            return "there", f"{dest}: already there"
        return "bad", f"{dest}: there but fails its check ({p}); left untouched: move it away and run again"
    if source is None:
        return "unknown", f"{dest}: missing"
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.part")
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    try:
        fetch(source, tmp)
        p = problem(tmp, check)
        os.replace(tmp, dest if p is None else dest + ".bad")
    except Exception as e:  # no network, Drive refused, disk full, ...
        return "failed", f"{dest}: {why(e)}"
    finally:
        if os.path.exists(tmp):  # a failed or interrupted transfer
            os.remove(tmp)
    if p is not None:
        return "refused", f"{dest}: the download fails its check ({p}); kept as {dest}.bad"
    return "downloaded", f"{dest}: downloaded and checked"


def listing(url):
    """(list_folder(url), None), or ({}, why it could not be read)."""
    try:
        return list_folder(url), None
    except Exception as e:
        return {}, why(e)


def not_listed(what, url, reason):
    """Why a file is not in the listing of the Drive folder `what` ('models' or 'datasets')."""
    if reason:
        return f"cannot list the {what} folder: {reason}"
    return f"not in the {what} folder" if url else f"the {what} folder is not known here: pass --{what}_url URL"


def download_models(url, root="checkpoint"):
    """Fetch the published checkpoints (MODELS) into root; True when all are there and pass their check."""
    names = {nets.FORMATS[kind].published_name: kind for kind in MODELS}
    ids, reason = {name: DRIVE.get(name) for name in names}, None
    if url and any(ids[n] is None and not os.path.exists(os.path.join(root, n)) for n in names):
        found, reason = listing(url)
        found = {os.path.basename(path): i for path, i in found.items()}
        ids = {n: ids[n] or found.get(n) for n in names}
    ok = True
    for name, kind in names.items():
        dest = os.path.join(root, name)
        state, line = get(ids[name], dest, lambda path, kind=kind: nets.load(kind, path))
        if state == "unknown":
            line += f" ({not_listed('models', url, reason)})"
        if state in ("unknown", "failed", "refused"):
            link = f"https://drive.google.com/file/d/{ids[name]}/view" if ids[name] else url or PUBLISHED
            line += f"; download {name} by hand from {link} to {dest}"
        print(line)
        ok &= state in ("there", "downloaded")
    return ok


def check_file(path, name):
    """The check of a data set file (`name`, its final name, says what it is): images must decode, archives pass
    their CRC test with safe member paths."""
    if name.lower().endswith(IMAGE_EXTENSIONS):
        read_image(path)
    elif name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            broken = z.testzip()
            unsafe = [n for n in z.namelist() if n.startswith("/") or ".." in n.split("/")]
        if broken or unsafe:
            raise ValueError(f"member {broken} fails its CRC test" if broken else f"unsafe member path {unsafe[0]}")


def unpack(archive, name, root):
    """Extract the members of a checked archive NAME.zip that are not there yet into root/NAME, never overwriting."""
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        prefix = "" if all(m.filename.startswith(name + "/") for m in members) else name + "/"
        new = [m for m in members if not os.path.exists(os.path.join(root, prefix + m.filename))]
        for m in tqdm(new, desc=f"unpacking {archive}", disable=not new):
            with z.open(m) as src:
                atomic_write(os.path.join(root, prefix + m.filename), lambda f: shutil.copyfileobj(src, f))
    return len(new)


def download_dataset(name, url, found, reason=None, root="dataset"):
    """Fetch data set `name` into root/NAME: the files below NAME/ in the listing `found` of the Drive folder `url`,
    or its archive NAME.zip, unpacked. True when every file is there. One line per set, one per file with a problem."""
    folder = os.path.join(root, name)
    files = {os.path.join(folder, path[len(name) + 1:]): i for path, i in found.items() if path.startswith(name + "/")}
    if f"{name}.zip" in found:
        files = {folder + ".zip": found[f"{name}.zip"]}
    by_hand = f"download it by hand from {url or PUBLISHED} into {folder}/ (layout: README 'Published files')"
    if not files:
        held = f", which holds {', '.join(sorted({path.split('/')[0] for path in found}))}" if found else ""
        print(f"{folder}: missing ({not_listed('datasets', url, reason)}{held}); {by_hand}")
        return False
    counts = {}
    for dest, file_id in tqdm(sorted(files.items()), desc=name, disable=len(files) < 2):
        state, line = get(file_id, dest, lambda path, dest=dest: check_file(path, dest))
        counts[state] = counts.get(state, 0) + 1
        if state not in ("there", "downloaded") or len(files) == 1:
            tqdm.write(line)
        if state == "failed":  # the next files would fail the same way
            break
        if dest == folder + ".zip" and state in ("there", "downloaded"):
            counts["unpacked"] = unpack(dest, name, root)
    ok = counts.get("there", 0) + counts.get("downloaded", 0) == len(files)
    print(f"{folder}: {len(files)} files in the datasets folder: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + ("" if ok else f"; {by_hand}"))
    return ok


def main(argv=None):
    args = parse_args(argv)
    ok = download_models(args.models_url, args.checkpoint_root)
    if args.datasets:
        found, reason = listing(args.datasets_url) if args.datasets_url else ({}, None)
        for name in args.datasets:
            ok &= download_dataset(name, args.datasets_url, found, reason, args.dataset_root)
    print("every file is there" if ok else "some files are missing: see the lines above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
