"""Download the published files: the pre-trained models into checkpoint/, named data sets into dataset/NAME/.

    python -m utils.download                                # the five published checkpoints
    python -m utils.download --datasets CASIA-Test LFW      # and these data sets, in the published layout

Both come from the authors' Google Drive folders (DRIVE below, linked from the published README; --models_url and
--datasets_url take others). Each file goes to a hidden temporary name beside its destination (.NAME.part) and is
checked there: a checkpoint must load strictly into its network with weights_only=True (nets.load), an image must
decode, an archive NAME.zip must pass its CRC test, hold safe and unique member names, declare no more than
--max_unpacked_gb and be in the published layout. Only a file that passes is renamed to its name (with the
permissions of the user's umask); one that fails is kept as NAME.bad, and a killed download leaves only the temporary,
which the next run resumes. Two runs into one folder take turns (a lock on the folder), so each file is checked after
its last writer. A file already in place is never overwritten: one that passes its check is kept ("already there"),
one that fails is reported and left alone. An archive's new members are unpacked into a temporary folder, every image
is decoded there, and only then are they moved into dataset/NAME (macOS's __MACOSX/ and dot-files are left out); any
problem leaves nothing of it. gdown lists at most 50 entries of a Drive folder: a set whose listing shows 50 may be
incomplete and is reported so. Every file that could not be had gets one line saying what to do by hand, with the
BaiduNetdisk copy; the exit status is 1 when any file is missing (or may be) at the end.
"""
import sys

from utils.checks import ArgumentParser, number

# The authors' published copies (README of the published Low-FaceNet repository): a Google Drive folder for the
# pre-trained models and one for the data sets (in it, a sub-folder NAME/ or an archive NAME.zip per set), and the
# same files on BaiduNetdisk for users where Drive is blocked.
DRIVE = {"models": "https://drive.google.com/drive/folders/1YNpVyA3zsSQ8ns2CfwqXU3A_S7Doj9TF",
         "datasets": "https://drive.google.com/drive/folders/1PHpYURYWxeFlnWABTSeXkEimNi2by7Dc"}
BAIDU = {"models": "BaiduNetdisk https://pan.baidu.com/s/18RD-XVuVjFQJEi3MmjsYBw, extraction code 7244",
         "datasets": "BaiduNetdisk https://pan.baidu.com/s/17TS_C3iC70eFsvKAuSuXtA, extraction code l38q"}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--datasets", nargs="*", default=[], metavar="NAME",
                   help="data sets to fetch into dataset/NAME, e.g. CASIA-Test LFW (LaPa-Face, Contrast, LaPa-Test, "
                        "CelebA-Test)")
    p.add_argument("--models_url", default=DRIVE["models"], help="the Drive folder of the pre-trained models "
                   "(default: the published one)")
    p.add_argument("--datasets_url", default=DRIVE["datasets"], help="the Drive folder of the data sets "
                   "(default: the published one)")
    p.add_argument("--checkpoint_root", default="checkpoint", help="where the checkpoints go")
    p.add_argument("--dataset_root", default="dataset", help="where the data sets go, one folder NAME each")
    p.add_argument("--max_unpacked_gb", type=number(0, above=True), default=50.0,
                   help="refuse an archive whose members declare more than this many GB unpacked (a guard against "
                        "archive bombs)")
    return p.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the imports below load torch

import contextlib  # noqa: E402
import errno  # noqa: E402
import fcntl  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import zipfile  # noqa: E402
from collections import Counter  # noqa: E402

import gdown  # noqa: E402
import requests  # noqa: E402
from tqdm import tqdm  # noqa: E402

import nets  # noqa: E402
from utils.checkpoint import plain_file_mode  # noqa: E402
from utils.images import IMAGE_EXTENSIONS, read_image  # noqa: E402

MODELS = ("enhance", "facenet_mobilenet", "retinaface", "deeplab", "unique")  # keys of nets.FORMATS on the Drive
LISTING_LIMIT = 50  # gdown shows at most this many entries of a Drive folder (Drive's embedded folder view)
LAYOUT = {"Contrast": ("high", "low")}  # the published sub-folders of a data set (README 'Published files')
DEFAULT_LAYOUT = ("underexposed", "normal", "seg", "SOTAs")


def fetch(source, dest):
    """The transport: download one Drive file (an id or a URL) to the path dest, with gdown's progress bar; gdown
    writes dest + 8 characters + .part first and resumes it after an interrupted run."""
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
    elif isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        kind = "the disk is full"
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


@functools.cache
def unlocked(reason):
    """Say once per run (per reason) that folders cannot be locked here."""
    tqdm.write(f"note: this file system cannot lock folders ({reason}): run one download at a time")


@contextlib.contextmanager
def folder_lock(folder):
    """Hold an exclusive lock on `folder` (flock on the folder itself: no lock file, and the system releases it when
    the process ends, however it ends): two downloads into one folder take turns instead of sharing temporaries."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tqdm.write(f"{folder}: another download is writing here; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # some network file systems lock only files open for writing
            unlocked(e.strerror or type(e).__name__)
        yield
    finally:
        os.close(fd)  # releases the lock


def get(source, dest, check):
    """Put the Drive file `source` at `dest` unless a file is there. Returns (state, line), state one of:
    'there' (kept, passes its check), 'downloaded', 'bad' (there, fails its check, left alone), 'refused' (the download
    fails its check: kept as dest.bad), 'failed' (no transfer), 'unknown' (source is None)."""
    if source is None and not os.path.exists(dest):
        return "unknown", f"{dest}: missing"
    folder = os.path.dirname(dest) or "."
    tmp = os.path.join(folder, f".{os.path.basename(dest)}.part")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:  # a file where the folder goes, no permission, ...
        return "failed", f"{dest}: cannot make its folder: {' '.join(str(e).split())}"
    with folder_lock(folder):  # decided and written by one process at a time
        if os.path.exists(dest):
            p = problem(dest, check)
            if p is None:
                return "there", f"{dest}: already there"
            return "bad", f"{dest}: there but fails its check ({p}); left untouched: move it away and run again"
        try:
            fetch(source, tmp)
            os.chmod(tmp, plain_file_mode())  # gdown's temporary is 0600
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


def cut_short(found, under=""):
    """The folders of a listing at or below `under` (a path ending in '/', or '' for all) that show LISTING_LIMIT
    entries: gdown shows no more, so they may hold more than listed."""
    entries = {}
    for path in found:
        if path.startswith(under):
            parts = path.split("/")
            for depth in range(under.count("/"), len(parts)):
                entries.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    return sorted(folder or "." for folder, names in entries.items() if len(names) >= LISTING_LIMIT)


def not_listed(what, found, reason):
    """Why a file is not in the listing `found` of the Drive folder `what` ('models' or 'datasets')."""
    if reason:
        return f"cannot list the {what} folder: {reason}"
    if cut_short(found):
        return f"not in the {what} folder's listing, which stops at gdown's limit of {LISTING_LIMIT} entries"
    return f"not in the {what} folder"


def by_hand(what, url, thing, dest):
    """The manual step for a file or data set that could not be had: the Drive folder, then BaiduNetdisk."""
    return f"download {thing} by hand from {url} (or {BAIDU[what]}) to {dest}"


def download_models(url, root="checkpoint"):
    """Fetch the published checkpoints (MODELS) into root; True when all are there and pass their check."""
    names = {nets.FORMATS[kind].published_name: kind for kind in MODELS}
    found, reason = {}, None
    if any(not os.path.exists(os.path.join(root, n)) for n in names):
        found, reason = listing(url)
    ids = {os.path.basename(path): i for path, i in found.items()}
    ok = True
    for name, kind in names.items():
        dest = os.path.join(root, name)
        state, line = get(ids.get(name), dest, lambda path, kind=kind: nets.load(kind, path))
        if state == "unknown":
            line += f" ({not_listed('models', found, reason)})"
        if state in ("unknown", "failed", "refused"):
            line += "; " + by_hand("models", url, name, dest)
        print(line)
        ok &= state in ("there", "downloaded")
    return ok


# ---------------------------------------------------------------------------------------------- data sets, archives
def left_out(member):
    """True for what a packer adds beside the data (macOS's __MACOSX/, dot-files such as .DS_Store): not unpacked."""
    return any(part == "__MACOSX" or part.startswith(".") for part in member.split("/"))


def layout_root(names, dataset):
    """The folder inside an archive of `dataset` (its member names) that is the data set: '' when the published
    sub-folders are at its top, else the single folder (or chain of single folders) leading to them. ValueError when
    neither holds (what __MACOSX/ and dot-files hold does not count)."""
    files = [n for n in names if not n.endswith("/") and not left_out(n)]
    expected = LAYOUT.get(dataset, DEFAULT_LAYOUT)
    root = ""
    while True:
        top = {n[len(root):].split("/")[0] for n in files}
        if top & set(expected):
            return root
        if len(top) != 1 or not all("/" in n[len(root):] for n in files):
            holds = ", ".join(sorted(top)[:5]) + (", ..." if len(top) > 5 else "") if top else "nothing"
            raise ValueError(f"not in the published layout: none of {', '.join(f'{e}/' for e in expected)} at its "
                             "top" + (f" or below its single folder ({root} holds {holds})" if root else
                                      f" (it holds {holds})"))
        root += top.pop() + "/"


def check_archive(path, dataset, max_bytes):
    """An archive of data set `dataset` passes when its member names are safe paths, each names one thing, the sizes
    they declare add up to at most max_bytes, it is in the published layout, and every member passes its CRC test."""
    with zipfile.ZipFile(path) as z:
        members = z.infolist()
        names = [m.filename for m in members]
        unsafe = [n for n in names if n.startswith("/") or ".." in n.split("/")]
        if unsafe:
            raise ValueError(f"unsafe member path {unsafe[0]}")
        counts = Counter(n.rstrip("/") for n in names)
        files = {n for n in names if not n.endswith("/")}
        folders = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.rstrip("/").count("/") + 1)}
        twice = sorted(n for n, c in counts.items() if c > 1) + sorted(files & folders)
        if twice:
            raise ValueError(f"member name {twice[0]} is there twice (or is a file and a folder): ambiguous")
        size = sum(m.file_size for m in members)
        if size > max_bytes:
            raise ValueError(f"its members declare {size / 1e9:.3g} GB unpacked, more than --max_unpacked_gb "
                             f"{max_bytes / 1e9:g}: pass a larger one if you trust it")
        layout_root(names, dataset)
        broken = z.testzip()
        if broken:
            raise ValueError(f"member {broken} fails its CRC test")


def check_file(path, name, max_bytes):
    """The check of a data set file (`name`, its final name, says what it is): an image must decode, an archive
    NAME.zip pass check_archive."""
    if name.lower().endswith(IMAGE_EXTENSIONS):
        read_image(path)
    elif name.lower().endswith(".zip"):
        check_archive(path, os.path.basename(name)[:-len(".zip")], max_bytes)


def in_the_way(folder, dests):
    """ValueError naming the first path below `folder` that blocks unpacking to `dests`: a folder where the archive
    has a file, or a file where it has a folder."""
    seen = set()
    for dest in dests:
        if os.path.isdir(dest):
            raise ValueError(f"{dest} is a folder where the archive has a file")
        parent = os.path.dirname(dest)
        while parent not in seen and len(parent) >= len(folder):
            seen.add(parent)
            if os.path.lexists(parent) and not os.path.isdir(parent):
                raise ValueError(f"{parent} is a file where the archive has a folder")
            parent = os.path.dirname(parent)


def unpack(archive, dataset, root):
    """Unpack the members of the checked archive `dataset`.zip that are not in root/DATASET yet: into a temporary
    folder beside it, every image decoded there, then moved into place, never over a file. Returns (unpacked, already
    there, left out) counts. Raises ValueError, one line, when it cannot; then nothing of it is left."""
    folder = os.path.join(root, dataset)
    with folder_lock(root), zipfile.ZipFile(archive) as z:
        top = layout_root(z.namelist(), dataset)
        members = [m for m in z.infolist() if not m.is_dir() and not left_out(m.filename)]
        dests = [os.path.join(folder, *m.filename[len(top):].split("/")) for m in members]
        in_the_way(folder, dests)
        new = [(m, dest) for m, dest in zip(members, dests) if not os.path.lexists(dest)]
        need, free = sum(m.file_size for m, _ in new), shutil.disk_usage(root).free
        if need > free:
            raise ValueError(f"it needs {need / 1e9:.3g} GB, the disk has {free / 1e9:.3g} GB free")
        tmp = tempfile.mkdtemp(prefix=f".{dataset}.unpack-", dir=root)
        moved, made = [], []
        try:
            for i, (m, dest) in enumerate(tqdm(new, desc=f"unpacking {archive}", disable=not new)):
                part = os.path.join(tmp, str(i))
                with z.open(m) as src, open(part, "wb") as f:
                    shutil.copyfileobj(src, f)
                p = problem(part, read_image) if dest.lower().endswith(IMAGE_EXTENSIONS) else None
                if p:
                    raise ValueError(f"member {m.filename}: {p}")
            for i, (m, dest) in enumerate(new):
                missing = []
                parent = os.path.dirname(dest)
                while parent and not os.path.isdir(parent):
                    missing.append(parent)
                    parent = os.path.dirname(parent)
                for parent in reversed(missing):
                    os.mkdir(parent)
                    made.append(parent)
                os.rename(os.path.join(tmp, str(i)), dest)
                moved.append(dest)
        except BaseException as e:  # nothing partial: take back what this call put in place
            for dest in moved:
                os.remove(dest)
            for parent in reversed(made):
                os.rmdir(parent)
            if isinstance(e, OSError):  # disk full, a file put in the way meanwhile, ...
                raise ValueError(why(e) if e.errno in (errno.ENOSPC, errno.EDQUOT) else " ".join(str(e).split())) \
                    from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return len(new), len(members) - len(new), sum(not m.is_dir() for m in z.infolist()) - len(members)


def download_dataset(name, url, found, reason, root, max_bytes):
    """Fetch data set `name` into root/NAME: the files below NAME/ in the listing `found` of the Drive folder `url`,
    or its archive NAME.zip, unpacked. True when every file is there. One line per set, one per file with a problem."""
    folder = os.path.join(root, name)
    files = {os.path.join(folder, path[len(name) + 1:]): i for path, i in found.items() if path.startswith(name + "/")}
    if f"{name}.zip" in found:
        files = {folder + ".zip": found[f"{name}.zip"]}
    manual = by_hand("datasets", url, "it", f"{folder}/ (layout: README 'Published files')")
    if not files:
        held = f", which holds {', '.join(sorted({path.split('/')[0] for path in found}))}" if found else ""
        print(f"{folder}: missing ({not_listed('datasets', found, reason)}{held}); {manual}")
        return False
    counts = {}
    for dest, file_id in tqdm(sorted(files.items()), desc=name, disable=len(files) < 2):
        state, line = get(file_id, dest, lambda path, dest=dest: check_file(path, dest, max_bytes))
        counts[state] = counts.get(state, 0) + 1
        if state not in ("there", "downloaded") or len(files) == 1:
            tqdm.write(line)
        if state == "failed":  # the next files would fail the same way
            break
        if dest == folder + ".zip" and state in ("there", "downloaded"):
            try:
                counts["unpacked"], counts["already unpacked"], counts["left out (__MACOSX, dot-files)"] = unpack(
                    dest, name, root)
            except ValueError as e:
                tqdm.write(f"{dest}: not unpacked into {folder} (nothing of it left there): {e}")
                counts["not unpacked"] = 1
    cut = [] if folder + ".zip" in files else cut_short(found, name + "/")
    ok = counts.get("there", 0) + counts.get("downloaded", 0) == len(files) and "not unpacked" not in counts
    ok &= not cut
    limit = f"; the listing of {', '.join(cut)} stops at gdown's limit of {LISTING_LIMIT} entries, so the set may " \
            f"hold more" if cut else ""
    print(f"{folder}: {len(files)} files in the datasets folder: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "unpacked") + limit
          + ("" if ok else f"; {manual}"))
    return ok


def main(argv=None):
    args = parse_args(argv)
    ok = download_models(args.models_url, args.checkpoint_root)
    if args.datasets:
        found, reason = listing(args.datasets_url)
        for name in args.datasets:
            ok &= download_dataset(name, args.datasets_url, found, reason, args.dataset_root,
                                   args.max_unpacked_gb * 1e9)
    print("every file is there" if ok else "some files are missing: see the lines above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
