"""python -m utils.download without the network: a fake Drive replaces the transport (fetch) and serves a folder
listing under the published folder URLs (download.DRIVE)."""
import argparse
import errno
import fcntl
import functools
import http.server
import io
import os
import shutil
import threading
import warnings
import zipfile

import gdown
import numpy as np
import pytest
import requests
import torch
from PIL import Image

import nets
from utils import download
from utils.checkpoint import CheckpointError, plain_file_mode
from utils.images import write_image

SMALL = ("enhance", "facenet_mobilenet", "retinaface")  # the quick ones; one test fetches all five
MODELS_URL = "https://drive.google.com/drive/folders/1YNpVyA3zsSQ8ns2CfwqXU3A_S7Doj9TF"
DATASETS_URL = "https://drive.google.com/drive/folders/1PHpYURYWxeFlnWABTSeXkEimNi2by7Dc"
MODELS_BAIDU = "BaiduNetdisk https://pan.baidu.com/s/18RD-XVuVjFQJEi3MmjsYBw, extraction code 7244"
DATASETS_BAIDU = "BaiduNetdisk https://pan.baidu.com/s/17TS_C3iC70eFsvKAuSuXtA, extraction code l38q"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """kind -> a file in the published format, made from the project's own networks."""
    folder = tmp_path_factory.mktemp("published")
    files = {}
    for kind in download.MODELS:
        fmt = nets.FORMATS[kind]
        state = fmt.build().state_dict()
        state = {fmt.strip_prefix + k: v for k, v in state.items()}
        files[kind] = folder / fmt.published_name
        torch.save(state if fmt.container == "bare" else {fmt.container: state}, files[kind])
    return files


@pytest.fixture
def drive(monkeypatch):
    """The fake Drive: `drive.files` (the models folder) and `drive.datasets` (the data-set folder) map a path in the
    folder to what fetching it does (writes dest or raises); the path is also its id. Only the published folder URLs
    are listed. Each fetched file is left 0600, as gdown leaves it. `drive.calls` lists the ids fetched."""
    fake = argparse.Namespace(files={}, datasets={}, calls=[])

    def fetch(source, dest):
        fake.calls.append(source)
        {**fake.files, **fake.datasets}[source](dest)
        os.chmod(dest, 0o600)

    def list_folder(url):
        folders = {MODELS_URL: fake.files, DATASETS_URL: fake.datasets}
        if url not in folders:
            raise requests.HTTPError(f"404 Client Error: Not Found for url: {url}")
        return {p: p for p in folders[url]}

    monkeypatch.setattr(download, "fetch", fetch)
    monkeypatch.setattr(download, "list_folder", list_folder)
    return fake


def serve(path):
    return lambda dest: shutil.copyfile(path, dest)


def raise_(error):
    def fail(dest):
        raise error
    return fail


def run(tmp_path, *args):
    return download.main(["--checkpoint_root", str(tmp_path / "checkpoint"),
                          "--dataset_root", str(tmp_path / "dataset"), *args])


def lines_about(out, path):
    return [line for line in out.splitlines() if line.startswith(f"{path}:")]


def test_the_published_folders_are_the_defaults():
    assert download.DRIVE == {"models": MODELS_URL, "datasets": DATASETS_URL}
    args = download.parse_args([])
    assert (args.models_url, args.datasets_url) == (MODELS_URL, DATASETS_URL)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for text in (MODELS_URL, DATASETS_URL, "https://pan.baidu.com/s/18RD-XVuVjFQJEi3MmjsYBw", "7244",
                 "https://pan.baidu.com/s/17TS_C3iC70eFsvKAuSuXtA", "l38q"):
        assert text in readme


def test_all_five_downloaded_checked_and_then_kept(tmp_path, good, drive, capsys):
    drive.files = {f"sub/{p.name}": serve(p) for p in good.values()}
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    ckpt = tmp_path / "checkpoint"
    for kind in download.MODELS:
        dest = ckpt / nets.FORMATS[kind].published_name
        assert lines_about(out, dest) == [f"{dest}: downloaded and checked"]
        nets.load(kind, dest)
        assert dest.stat().st_mode & 0o777 == plain_file_mode()  # the umask's, not gdown's 0600
    assert sorted(os.listdir(ckpt)) == sorted(p.name for p in good.values())  # no temporary left
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpt.iterdir()}
    drive.calls.clear()
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    assert drive.calls == []
    assert out.count(": already there") == 5 and "every file is there" in out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpt.iterdir()} == before


def test_wrong_or_truncated_downloads_are_refused(tmp_path, good, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", SMALL)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good["enhance"].read_bytes()[:5000])
    pickled = tmp_path / "pickled.pth"
    torch.save(argparse.Namespace(weights=[1, 2]), pickled)  # a pickled object, not tensors
    drive.files = {"Low-FaceNet.pth": serve(truncated), "facenet_mobilenet.pth": serve(pickled),
                   "Retinaface_mobilenet0.25.pth": serve(good["enhance"])}  # another network's keys
    assert run(tmp_path) == 1
    out = capsys.readouterr().out
    ckpt = tmp_path / "checkpoint"
    for name, reason in [("Low-FaceNet.pth", "not a readable weights-only PyTorch checkpoint"),
                         ("facenet_mobilenet.pth", "not a readable weights-only PyTorch checkpoint"),
                         ("Retinaface_mobilenet0.25.pth", "of RetinaFace; 300 missing keys (first: body.stage1")]:
        (line,) = lines_about(out, ckpt / name)
        assert "the download fails its check" in line and reason in line and f"kept as {ckpt / name}.bad" in line
        assert line.endswith(f"download {name} by hand from {MODELS_URL} (or {MODELS_BAIDU}) to {ckpt / name}")
        assert not (ckpt / name).exists() and (ckpt / f"{name}.bad").exists()
    assert (ckpt / "Low-FaceNet.pth.bad").read_bytes() == truncated.read_bytes()
    assert not [p for p in os.listdir(ckpt) if p.endswith(".part")]


def test_killed_download_leaves_no_file(tmp_path, good, drive, monkeypatch):
    monkeypatch.setattr(download, "MODELS", ("enhance",))

    def killed(dest):
        with open(dest, "wb") as f:
            f.write(good["enhance"].read_bytes()[:5000])
        raise KeyboardInterrupt

    drive.files = {"Low-FaceNet.pth": killed}
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    assert os.listdir(tmp_path / "checkpoint") == []


@pytest.mark.parametrize("error, kind", [
    (requests.ConnectionError("Failed to resolve 'drive.google.com'"), "no network or the connection failed"),
    (gdown.exceptions.FileURLRetrievalError("Too many users have viewed or downloaded this file recently"),
     "Google Drive refused"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
])
def test_no_network_or_drive_refusal_one_line_per_file(tmp_path, good, drive, monkeypatch, capsys, error, kind):
    monkeypatch.setattr(download, "MODELS", SMALL)
    drive.files = {"Low-FaceNet.pth": raise_(error), "facenet_mobilenet.pth": raise_(error),
                   "Retinaface_mobilenet0.25.pth": serve(good["retinaface"])}
    assert run(tmp_path) == 1
    out = capsys.readouterr().out
    ckpt = tmp_path / "checkpoint"
    for name in ("Low-FaceNet.pth", "facenet_mobilenet.pth"):
        (line,) = lines_about(out, ckpt / name)
        assert kind in line and str(error) in line
        assert line.endswith(f"download {name} by hand from {MODELS_URL} (or {MODELS_BAIDU}) to {ckpt / name}")
        assert not (ckpt / name).exists()
    assert os.listdir(ckpt) == ["Retinaface_mobilenet0.25.pth"]


def test_unlisted_or_unreadable_folder_names_the_manual_step(tmp_path, good, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", SMALL)
    dest = tmp_path / "checkpoint" / "Low-FaceNet.pth"
    manual = f"download Low-FaceNet.pth by hand from {MODELS_URL} (or {MODELS_BAIDU}) to {dest}"
    monkeypatch.setattr(download, "list_folder", raise_(requests.ConnectionError("no route to host")))
    assert run(tmp_path) == 1
    assert lines_about(capsys.readouterr().out, dest) == [
        f"{dest}: missing (cannot list the models folder: no network or the connection failed: no route to host); "
        + manual]
    monkeypatch.undo()
    monkeypatch.setattr(download, "MODELS", SMALL)
    monkeypatch.setattr(download, "fetch", lambda source, dest: shutil.copyfile(good["retinaface"], dest))
    listed = {"Retinaface_mobilenet0.25.pth": "id"}
    monkeypatch.setattr(download, "list_folder", lambda url: listed)
    assert run(tmp_path) == 1
    assert lines_about(capsys.readouterr().out, dest) == [f"{dest}: missing (not in the models folder); {manual}"]
    listed.update({f"other/{i}.txt": f"{i}" for i in range(download.LISTING_LIMIT)})  # 50 entries: maybe more
    assert run(tmp_path) == 1
    assert lines_about(capsys.readouterr().out, dest) == [
        f"{dest}: missing (not in the models folder's listing, which stops at gdown's limit of 50 entries); {manual}"]
    assert os.listdir(dest.parent) == ["Retinaface_mobilenet0.25.pth"]


def test_existing_files_are_never_replaced(tmp_path, good, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", SMALL)
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "Low-FaceNet.pth").write_bytes(b"my notes, not weights")
    shutil.copyfile(good["retinaface"], ckpt / "Retinaface_mobilenet0.25.pth")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpt.iterdir()}
    drive.files = {p.name: serve(p) for p in good.values()}
    assert run(tmp_path) == 1
    out = capsys.readouterr().out
    assert drive.calls == ["facenet_mobilenet.pth"]
    (line,) = lines_about(out, ckpt / "Low-FaceNet.pth")
    assert "there but fails its check (not a readable weights-only PyTorch checkpoint" in line
    assert line.endswith("left untouched: move it away and run again")
    assert lines_about(out, ckpt / "Retinaface_mobilenet0.25.pth") == [
        f"{ckpt / 'Retinaface_mobilenet0.25.pth'}: already there"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in ckpt.iterdir() if p.name in before} == before


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found\. .*run `python -m utils.download`"):
        nets.load("enhance", tmp_path / "Low-FaceNet.pth")


def _image(path, value):
    write_image(np.full((8, 8, 3), value, np.uint8), path)
    return path


def png(value):
    """The bytes of a small PNG image."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def archive(path, members):
    """A zip archive of (name, bytes) members (a name may come twice)."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as z:
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning
        for name, data in members:
            z.writestr(name, data)
    return path


def files_below(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_datasets_from_a_folder_and_from_an_archive(tmp_path, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", ())
    src = tmp_path / "src"
    casia = {f"CASIA-Test/{part}/a_{i}.png": _image(src / f"c{part}{i}.png", 40 * i)
             for part in ("underexposed", "normal") for i in range(2)}
    broken = src / "broken.png"
    broken.write_bytes(_image(src / "x.png", 9).read_bytes()[:20])
    lfw = archive(src / "LFW.zip", [(f"LFW/normal/{p}/{p}_0001.jpg", _image(src / f"{p}.jpg", 60 * i).read_bytes())
                                    for i, p in enumerate(("Ann", "Bob"))])
    drive.datasets = {"LFW.zip": serve(lfw), "CASIA-Test/seg/a_0.png": serve(broken),
                      **{p: serve(f) for p, f in casia.items()}}
    args = ("--datasets", "CASIA-Test", "LFW", "LaPa-Test")
    assert run(tmp_path, *args) == 1
    out = capsys.readouterr().out
    data = tmp_path / "dataset"
    for p, f in casia.items():
        assert (data / p).read_bytes() == f.read_bytes()
        assert (data / p).stat().st_mode & 0o777 == plain_file_mode()
    bad = data / "CASIA-Test" / "seg" / "a_0.png"
    assert not bad.exists() and (data / "CASIA-Test/seg/a_0.png.bad").exists()
    assert f"{bad}: the download fails its check (cannot read image" in out
    assert f"{data / 'CASIA-Test'}: 5 files in the datasets folder: 4 downloaded, 1 refused; download it by hand" in out
    assert files_below(data / "LFW") == ["normal/Ann/Ann_0001.jpg", "normal/Bob/Bob_0001.jpg"]
    assert (data / "LFW.zip").exists()
    assert (data / "LFW/normal/Bob/Bob_0001.jpg").stat().st_mode & 0o777 == plain_file_mode()
    assert f"{data / 'LFW'}: 1 files in the datasets folder: 1 downloaded, 2 unpacked" in out
    (line,) = lines_about(out, data / "LaPa-Test")
    assert "missing (not in the datasets folder, which holds CASIA-Test, LFW.zip)" in line
    assert line.endswith(f"download it by hand from {DATASETS_URL} (or {DATASETS_BAIDU}) to {data / 'LaPa-Test'}/ "
                         "(layout: README 'Published files')")

    # again: nothing fetched but the refused file, nothing unpacked over an existing (edited) file
    (data / "LFW/normal/Ann/Ann_0001.jpg").write_bytes(b"edited")
    drive.calls.clear()
    drive.datasets["CASIA-Test/seg/a_0.png"] = serve(_image(src / "fixed.png", 3))
    assert run(tmp_path, *args[:-1]) == 0
    out = capsys.readouterr().out
    assert drive.calls == ["CASIA-Test/seg/a_0.png"]
    assert (data / "LFW/normal/Ann/Ann_0001.jpg").read_bytes() == b"edited"
    assert f"{data / 'LFW'}: 1 files in the datasets folder: 1 there, 0 unpacked, 2 already unpacked" in out


def test_a_listing_cut_short_at_gdowns_limit_says_what_to_do(tmp_path, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", ())
    image = _image(tmp_path / "a.png", 7)
    drive.datasets = {f"LFW/normal/person_{i:02d}/1.png": serve(image) for i in range(download.LISTING_LIMIT)}
    assert run(tmp_path, "--datasets", "LFW") == 1
    data = tmp_path / "dataset"
    assert lines_about(capsys.readouterr().out, data / "LFW") == [
        f"{data / 'LFW'}: 50 files in the datasets folder: 50 downloaded; the listing of LFW/normal stops at gdown's "
        f"limit of 50 entries, so the set may hold more; download it by hand from {DATASETS_URL} (or {DATASETS_BAIDU})"
        f" to {data / 'LFW'}/ (layout: README 'Published files')"]
    assert len(files_below(data / "LFW")) == 50

    drive.datasets = {f"Set{i:02d}.zip": serve(image) for i in range(download.LISTING_LIMIT)}
    assert run(tmp_path, "--datasets", "LaPa-Test") == 1
    (line,) = lines_about(capsys.readouterr().out, data / "LaPa-Test")
    assert line.startswith(f"{data / 'LaPa-Test'}: missing (not in the datasets folder's listing, which stops at "
                           "gdown's limit of 50 entries, which holds Set00.zip, ")
    assert line.endswith(f"download it by hand from {DATASETS_URL} (or {DATASETS_BAIDU}) to {data / 'LaPa-Test'}/ "
                         "(layout: README 'Published files')")


@pytest.mark.parametrize("top", ["LFW/", "", "LFW-v2/LFW/"])
def test_archive_layout_found_below_stray_members(tmp_path, drive, monkeypatch, capsys, top):
    monkeypatch.setattr(download, "MODELS", ())
    members = [(f"{top}normal/Ann/Ann_0001.png", png(10)), (f"{top}underexposed/Ann/Ann_0001.png", png(1)),
               (f"{top}pairs.txt", b"Ann 1"), ("__MACOSX/LFW/normal/Ann/._Ann_0001.png", b"\0\5\26\7"),
               (f"{top}normal/.DS_Store", b"\0\0\0\1Bud1"), (f"{top}normal/Ann/", b"")]
    drive.datasets = {"LFW.zip": serve(archive(tmp_path / "LFW.zip", members))}
    assert run(tmp_path, "--datasets", "LFW") == 0
    data = tmp_path / "dataset"
    assert files_below(data / "LFW") == ["normal/Ann/Ann_0001.png", "pairs.txt", "underexposed/Ann/Ann_0001.png"]
    assert sorted(os.listdir(data)) == ["LFW", "LFW.zip"]  # no __MACOSX, no temporary folder
    assert (data / "LFW/normal/Ann/Ann_0001.png").read_bytes() == png(10)
    assert f"{data / 'LFW'}: 1 files in the datasets folder: 1 downloaded, 3 unpacked, 2 left out (__MACOSX, " \
           "dot-files)" in capsys.readouterr().out


@pytest.mark.parametrize("members, flags, reason", [
    ([("photos/a.png", png(1)), ("more/b.png", png(2))], (),
     "not in the published layout: none of high/, low/ at its top (it holds more, photos)"),
    ([("Contrast/normal/a.png", png(1)), ("__MACOSX/Contrast/high/._a.png", b"")], (),
     "not in the published layout: none of high/, low/ at its top or below its single folder (Contrast/normal/ holds "
     "a.png)"),
    ([("Contrast/high/a.png", png(1)), ("Contrast/high/a.png", png(2))], (),
     "member name Contrast/high/a.png is there twice (or is a file and a folder): ambiguous"),
    ([("Contrast/high", png(1)), ("Contrast/high/a.png", png(2))], (),
     "member name Contrast/high is there twice (or is a file and a folder): ambiguous"),
    ([("Contrast/high/a.png", bytes(3000))], ("--max_unpacked_gb", "0.000002"),
     "its members declare 3e-06 GB unpacked, more than --max_unpacked_gb 2e-06: pass a larger one if you trust it"),
])
def test_archive_refused_before_anything_is_unpacked(tmp_path, drive, monkeypatch, capsys, members, flags, reason):
    monkeypatch.setattr(download, "MODELS", ())
    drive.datasets = {"Contrast.zip": serve(archive(tmp_path / "Contrast.zip", members))}
    assert run(tmp_path, "--datasets", "Contrast", *flags) == 1
    data = tmp_path / "dataset"
    (line,) = lines_about(capsys.readouterr().out, data / "Contrast.zip")
    assert line == f"{data / 'Contrast.zip'}: the download fails its check ({reason}); kept as {data}/Contrast.zip.bad"
    assert sorted(os.listdir(data)) == ["Contrast.zip.bad"]


def _lfw(tmp_path, drive, monkeypatch, *members):
    monkeypatch.setattr(download, "MODELS", ())
    drive.datasets = {"LFW.zip": serve(archive(tmp_path / "LFW.zip", [
        ("LFW/normal/Ann/1.png", png(1)), ("LFW/normal/Bob/1.png", png(2)), *members]))}
    return tmp_path / "dataset"


def test_archive_with_an_undecodable_image_leaves_nothing(tmp_path, drive, monkeypatch, capsys):
    data = _lfw(tmp_path, drive, monkeypatch, ("LFW/normal/Cy/1.png", png(3)[:30]))  # CRC fine, image cut short
    assert run(tmp_path, "--datasets", "LFW") == 1
    (line,) = [line for line in lines_about(capsys.readouterr().out, data / "LFW.zip") if "not unpacked" in line]
    assert line.startswith(f"{data / 'LFW.zip'}: not unpacked into {data / 'LFW'} (nothing of it left there): member "
                           "LFW/normal/Cy/1.png: cannot read image")
    assert os.listdir(data) == ["LFW.zip"]


def test_unpack_conflict_is_one_line_and_touches_nothing(tmp_path, drive, monkeypatch, capsys):
    data = _lfw(tmp_path, drive, monkeypatch)
    (data / "LFW").mkdir(parents=True)
    (data / "LFW/normal").write_bytes(b"a file where the archive has a folder")
    assert run(tmp_path, "--datasets", "LFW") == 1
    (line,) = [line for line in lines_about(capsys.readouterr().out, data / "LFW.zip") if "not unpacked" in line]
    assert line == (f"{data / 'LFW.zip'}: not unpacked into {data / 'LFW'} (nothing of it left there): "
                    f"{data / 'LFW/normal'} is a file where the archive has a folder")
    assert files_below(data) == ["LFW.zip", "LFW/normal"]
    assert (data / "LFW/normal").read_bytes() == b"a file where the archive has a folder"


@pytest.mark.parametrize("when", ["unpacking", "moving into place"])
def test_full_disk_while_unpacking_leaves_nothing(tmp_path, drive, monkeypatch, capsys, when):
    data = _lfw(tmp_path, drive, monkeypatch)
    (data / "LFW/normal/Ann").mkdir(parents=True)  # a folder of the user's: kept
    full = OSError(errno.ENOSPC, "No space left on device")
    calls = []

    def fail_second(real):
        def wrapper(*args, **kwargs):
            calls.append(args)
            if len(calls) == 2:
                raise full
            return real(*args, **kwargs)
        return wrapper

    if when == "unpacking":
        monkeypatch.setattr(shutil, "copyfileobj", fail_second(shutil.copyfileobj))
    else:
        monkeypatch.setattr(os, "rename", fail_second(os.rename))
    assert run(tmp_path, "--datasets", "LFW") == 1
    monkeypatch.undo()
    (line,) = [line for line in lines_about(capsys.readouterr().out, data / "LFW.zip") if "not unpacked" in line]
    assert line == (f"{data / 'LFW.zip'}: not unpacked into {data / 'LFW'} (nothing of it left there): "
                    "the disk is full: [Errno 28] No space left on device")
    assert files_below(data) == ["LFW.zip"] and os.listdir(data / "LFW/normal") == ["Ann"]


def test_two_downloads_into_one_folder_take_turns(tmp_path, good, drive, monkeypatch):
    """The second waits for the first's lock, then finds the file there and checks it: it neither writes into the
    first one's temporary nor downloads it again."""
    data = good["enhance"].read_bytes()
    writing, waiting = threading.Event(), threading.Event()
    flock = fcntl.flock

    def watched_flock(fd, operation):
        try:
            return flock(fd, operation)
        except BlockingIOError:
            waiting.set()
            raise

    def slow(dest):
        with open(dest, "wb") as f:
            f.write(data[:5000])
            f.flush()
            writing.set()
            assert waiting.wait(10), "the second download did not wait"
            f.write(data[5000:])

    monkeypatch.setattr(fcntl, "flock", watched_flock)
    drive.files = {"Low-FaceNet.pth": slow}
    dest = str(tmp_path / "checkpoint" / "Low-FaceNet.pth")
    results = {}

    def one(key):
        results[key] = download.get("Low-FaceNet.pth", dest, lambda path: nets.load("enhance", path))

    first = threading.Thread(target=one, args=("first",))
    first.start()
    assert writing.wait(10)
    second = threading.Thread(target=one, args=("second",))
    second.start()
    first.join(20)
    second.join(20)
    assert results == {"first": ("downloaded", f"{dest}: downloaded and checked"),
                       "second": ("there", f"{dest}: already there")}
    assert drive.calls == ["Low-FaceNet.pth"]
    assert open(dest, "rb").read() == data and os.listdir(tmp_path / "checkpoint") == ["Low-FaceNet.pth"]


def test_the_real_transport_from_a_local_server_honours_the_umask(tmp_path, good, monkeypatch):
    """gdown itself (no fake fetch), from an HTTP server on this machine: its 0600 temporary becomes a file with the
    umask's permissions, and nothing else is left beside it."""
    (tmp_path / "site").mkdir()
    shutil.copyfile(good["enhance"], tmp_path / "site" / "Low-FaceNet.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    dest = str(tmp_path / "checkpoint" / "Low-FaceNet.pth")
    try:
        state, line = download.get(f"http://127.0.0.1:{server.server_port}/Low-FaceNet.pth", dest,
                                   lambda path: nets.load("enhance", path))
    finally:
        server.shutdown()
    assert (state, line) == ("downloaded", f"{dest}: downloaded and checked")
    assert os.stat(dest).st_mode & 0o777 == plain_file_mode() != 0o600
    assert open(dest, "rb").read() == good["enhance"].read_bytes()
    assert os.listdir(tmp_path / "checkpoint") == ["Low-FaceNet.pth"]


def test_a_file_where_the_folder_goes_is_one_line(tmp_path, good, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", ("enhance",))
    drive.files = {"Low-FaceNet.pth": serve(good["enhance"])}
    (tmp_path / "checkpoint").write_bytes(b"my notes")
    assert run(tmp_path) == 1
    dest = tmp_path / "checkpoint" / "Low-FaceNet.pth"
    (line,) = lines_about(capsys.readouterr().out, dest)
    assert line.startswith(f"{dest}: cannot make its folder: [Errno 17] File exists") and line.endswith(f"to {dest}")
    assert (tmp_path / "checkpoint").read_bytes() == b"my notes" and drive.calls == []


def test_a_file_system_without_folder_locks_downloads_with_a_note(tmp_path, good, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", SMALL)
    monkeypatch.setattr(fcntl, "flock", lambda fd, operation: raise_(OSError(errno.EBADF, "Bad file descriptor"))(fd))
    download.unlocked.cache_clear()
    drive.files = {p.name: serve(p) for p in good.values()}
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    note = "note: this file system cannot lock folders (Bad file descriptor): run one download at a time"
    assert out.count(note) == 1
    assert out.count("downloaded and checked") == 3
