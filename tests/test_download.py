"""python -m utils.download without the network: a fake Drive replaces the transport (fetch) and the folder listing."""
import argparse
import os
import shutil
import zipfile

import gdown
import numpy as np
import pytest
import requests
import torch

import nets
from utils import download
from utils.checkpoint import CheckpointError
from utils.images import write_image

SMALL = ("enhance", "facenet_mobilenet", "retinaface")  # the quick ones; one test fetches all five
MODELS_URL = "https://drive.google.com/drive/folders/FAKE-MODELS"
DATASETS_URL = "https://drive.google.com/drive/folders/FAKE-DATASETS"


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
    """The fake Drive: `drive.files` maps a path in the folder to what fetching it does (writes dest or raises);
    the path is also its id. `drive.calls` lists the ids fetched."""
    fake = argparse.Namespace(files={}, calls=[])

    def fetch(source, dest):
        fake.calls.append(source)
        fake.files[source](dest)

    monkeypatch.setattr(download, "fetch", fetch)
    monkeypatch.setattr(download, "list_folder", lambda url: {p: p for p in fake.files})
    return fake


def serve(path):
    return lambda dest: shutil.copyfile(path, dest)


def raise_(error):
    def fail(dest):
        raise error
    return fail


def run(tmp_path, *args):
    return download.main(["--models_url", MODELS_URL, "--checkpoint_root", str(tmp_path / "checkpoint"),
                          "--dataset_root", str(tmp_path / "dataset"), *args])


def lines_about(out, path):
    return [line for line in out.splitlines() if line.startswith(f"{path}:")]


def test_all_five_downloaded_checked_and_then_kept(tmp_path, good, drive, capsys):
    drive.files = {f"sub/{p.name}": serve(p) for p in good.values()}
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    ckpt = tmp_path / "checkpoint"
    for kind in download.MODELS:
        dest = ckpt / nets.FORMATS[kind].published_name
        assert lines_about(out, dest) == [f"{dest}: downloaded and checked"]
        nets.load(kind, dest)
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
        assert f"by hand from https://drive.google.com/file/d/{name}/view to {ckpt / name}" in line
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
        link = f"https://drive.google.com/file/d/{name}/view"
        assert line.endswith(f"download {name} by hand from {link} to {ckpt / name}")
        assert not (ckpt / name).exists()
    assert os.listdir(ckpt) == ["Retinaface_mobilenet0.25.pth"]


def test_unlisted_or_unknown_folder_names_the_manual_step(tmp_path, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", SMALL)
    monkeypatch.setattr(download, "list_folder", raise_(requests.ConnectionError("no route to host")))
    assert run(tmp_path) == 1
    out = capsys.readouterr().out
    dest = tmp_path / "checkpoint" / "Low-FaceNet.pth"
    assert lines_about(out, dest) == [f"{dest}: missing (cannot list the models folder: no network or the connection "
                                      f"failed: no route to host); download Low-FaceNet.pth by hand from {MODELS_URL} "
                                      f"to {dest}"]
    assert download.main(["--checkpoint_root", str(tmp_path / "checkpoint")]) == 1  # no folder URL at all
    (line,) = lines_about(capsys.readouterr().out, dest)
    assert "pass --models_url URL" in line and f"to {dest}" in line and drive.calls == []


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


def test_datasets_from_a_folder_and_from_an_archive(tmp_path, good, drive, monkeypatch, capsys):
    monkeypatch.setattr(download, "MODELS", ("enhance",))
    src = tmp_path / "src"
    casia = {f"CASIA-Test/{part}/a_{i}.png": _image(src / f"c{part}{i}.png", 40 * i)
             for part in ("underexposed", "normal") for i in range(2)}
    broken = src / "broken.png"
    broken.write_bytes(_image(src / "x.png", 9).read_bytes()[:20])
    archive = src / "LFW.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, person in enumerate(("Ann", "Bob")):
            z.write(_image(src / f"{person}.jpg", 60 * i), f"LFW/normal/{person}/{person}_0001.jpg")
    drive.files = {"Low-FaceNet.pth": serve(good["enhance"]), "LFW.zip": serve(archive),
                   "CASIA-Test/seg/a_0.png": serve(broken), **{p: serve(f) for p, f in casia.items()}}
    monkeypatch.setattr(download, "list_folder", lambda url: {p: p for p in drive.files if p != "Low-FaceNet.pth"}
                        if url == DATASETS_URL else {"Low-FaceNet.pth": "Low-FaceNet.pth"})
    args = ("--datasets_url", DATASETS_URL, "--datasets", "CASIA-Test", "LFW", "LaPa-Test")
    assert run(tmp_path, *args) == 1
    out = capsys.readouterr().out
    data = tmp_path / "dataset"
    for p, f in casia.items():
        assert (data / p).read_bytes() == f.read_bytes()
    bad = data / "CASIA-Test" / "seg" / "a_0.png"
    assert not bad.exists() and (data / "CASIA-Test/seg/a_0.png.bad").exists()
    assert f"{bad}: the download fails its check (cannot read image" in out
    assert f"{data / 'CASIA-Test'}: 5 files in the datasets folder: 4 downloaded, 1 refused; download it by hand" in out
    assert (data / "LFW/normal/Bob/Bob_0001.jpg").exists() and (data / "LFW.zip").exists()
    assert f"{data / 'LFW'}: 1 files in the datasets folder: 1 downloaded, 2 unpacked" in out
    (line,) = lines_about(out, data / "LaPa-Test")
    assert "missing (not in the datasets folder, which holds CASIA-Test, LFW.zip)" in line
    assert line.endswith(f"by hand from {DATASETS_URL} into {data / 'LaPa-Test'}/ (layout: README 'Published files')")

    # again: nothing fetched but the refused file, nothing unpacked over an existing (edited) file
    (data / "LFW/normal/Ann/Ann_0001.jpg").write_bytes(b"edited")
    drive.calls.clear()
    drive.files["CASIA-Test/seg/a_0.png"] = serve(_image(src / "fixed.png", 3))
    assert run(tmp_path, *args[:-1]) == 0
    out = capsys.readouterr().out
    assert drive.calls == ["CASIA-Test/seg/a_0.png"]
    assert (data / "LFW/normal/Ann/Ann_0001.jpg").read_bytes() == b"edited"
    assert f"{data / 'LFW'}: 1 files in the datasets folder: 1 there, 0 unpacked" in out
