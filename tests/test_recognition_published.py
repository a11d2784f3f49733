"""eval.py's recognition as the published code scores it: the published prediction path (Retinaface.detect_image,
pinned by parity_face.pt's train_path), database images re-saved by Pillow, the published average over batches of
4 (--compat), eval.py's predictions equal to the face loss's; and a face database build that removes only what it
wrote, refuses other folders, and leaves nothing partial on a full disk."""
import errno
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import eval as evaluate
import utils.face_database as face_database
from conftest import IDENTITIES, assert_close, copy_faces, load_parity
from nets.face_recognition import FaceRecognitionLoss, encode_faces, identify, similarities
from utils.face_database import MANIFEST, build_database, identity_of, listdir_order, load_encodings
from utils.images import list_images, read_image, to_tensor, write_image
from utils.lowlight import darken
from utils.metrics import batch_mean_accuracy


# ---------------------------------------------------------------- the published prediction path

def test_similarities_match_published_detect_image(detector, facenet):
    """parity_face.pt's train_path: the cosine similarities of Retinaface.detect_image on a [0,1] image."""
    ref = load_parity("face")["train_path"]
    cos, found = similarities(ref["image"], detector, facenet, ref["database"])
    assert found == [0]
    assert_close(cos[0], ref["cos"], rtol=1e-4, atol=1e-6, what="cos of the published prediction")
    names = [f"id{k}" for k in range(len(ref["database"]))]
    image = ref["image"][0].mul(255).round().byte().permute(1, 2, 0).numpy()  # as an 8-bit file holds it
    small = np.ascontiguousarray(image[::2, ::2])  # another size: another detector batch
    got = identify([image, np.zeros_like(image), small, image], detector, facenet, ref["database"], names, "cpu", 4)
    assert got[0] == got[3] == names[int(ref["cos"].argmax())] and got[1] is None and got[2] is not None


def test_published_average_over_batches_of_four():
    hits = [False] * 93  # the folder: 6 correct of 93, one in each of six full batches
    for batch in range(6):
        hits[4 * batch] = True
    assert batch_mean_accuracy(hits) == 6.25 and 100 * sum(hits) / len(hits) == pytest.approx(6.4516, 1e-4)
    assert batch_mean_accuracy([True, False, False, False, True, False]) == pytest.approx((25 + 50) / 2)
    assert batch_mean_accuracy([True] * 5) == 100 and np.isnan(batch_mean_accuracy([]))


# ---------------------------------------------------------------- the database images

def test_database_images_are_resaved_as_pillow_saves_them(tmp_path, face_photos, detector, facenet):
    normal = tmp_path / "normal"
    copy_faces(face_photos, normal, IDENTITIES[:2], 2)
    png = normal / IDENTITIES[1] / f"{IDENTITIES[1]}_0000.png"  # a PNG is chosen for the second identity
    Image.open(normal / IDENTITIES[1] / f"{IDENTITIES[1]}_0002.jpg").save(png)
    encodings, names = load_encodings(normal, tmp_path / "database", tmp_path / "encoding", "S", detector, facenet,
                                      "cpu")
    assert names == IDENTITIES[:2]
    for rel in (f"{IDENTITIES[0]}/{IDENTITIES[0]}_0001.jpg", f"{IDENTITIES[1]}/{png.name}"):
        published = tmp_path / "published" / os.path.basename(rel)  # the published load_face_database's own save
        published.parent.mkdir(exist_ok=True)
        Image.open(normal / rel).save(published)
        assert (tmp_path / "database" / published.name).read_bytes() == published.read_bytes()
    source = normal / IDENTITIES[0] / f"{IDENTITIES[0]}_0001.jpg"
    assert (tmp_path / "database" / source.name).read_bytes() != source.read_bytes()  # re-encoded, not copied
    # the encodings are those of the re-saved files
    expected, kept = encode_faces([read_image(tmp_path / "published" / source.name), read_image(png)], detector,
                                  facenet, "cpu")
    assert kept == [0, 1] and torch.equal(encodings, expected)
    assert not torch.equal(encode_faces([read_image(source)], detector, facenet, "cpu")[0][0], encodings[0])


def test_compat_database_choice_follows_os_listdir(tmp_path, face_photos, monkeypatch):
    copy_faces(face_photos, tmp_path / "normal", IDENTITIES[:2], 3)
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": sorted(real_listdir(path), reverse=True))  # another FS
    sorted_choice = build_database(tmp_path / "normal", tmp_path / "db_sorted")
    listdir_choice = build_database(tmp_path / "normal", tmp_path / "db_listdir", "listdir")
    assert [dst for _, dst, _ in sorted_choice] == [f"{i}_0001.jpg" for i in IDENTITIES[:2]]
    assert [dst for _, dst, _ in listdir_choice] == [f"{i}_0003.jpg" for i in reversed(IDENTITIES[:2])]
    rels = list_images(tmp_path / "normal")[0]
    assert listdir_order(tmp_path / "normal", rels) == sorted(rels, reverse=True)


# ---------------------------------------------------------------- eval.py end to end

@pytest.fixture(scope="module")
def dark_set(tmp_path_factory, face_photos):
    """dataset/LFW: normal/ = 5 identities x 3 photos; SOTAs/Dark = photos 2 and 3 darkened (10, not a multiple of
    4), flat names."""
    root = tmp_path_factory.mktemp("recognition")
    data = root / "dataset" / "LFW"
    copy_faces(face_photos, data / "normal", IDENTITIES, 3)
    rng = np.random.default_rng(3)
    for name in IDENTITIES:
        for k in (2, 3):
            image = read_image(data / "normal" / name / f"{name}_000{k}.jpg")
            write_image(darken(image, rng, "gamma", gamma=1.6, noise_std=0.05),
                        str(data / "SOTAs/Dark" / f"{name}_000{k}.png"))
    return root


def _argv(root, retinaface_weights, facenet_file, *extra):
    return ["--dataset_name", "LFW", "--method_name", "Dark", "--dataset_root", str(root / "dataset"),
            "--database_root", str(root / "database"), "--encoding_root", str(root / "encoding"),
            "--log_path", str(root / "eval.txt"), "--retinaface_checkpoint", str(retinaface_weights),
            "--facenet_checkpoint", str(facenet_file), "--device", "cpu", "--num_workers", "0", "--batch_size", "3",
            *extra]


@pytest.fixture
def recorded_predictions(monkeypatch):
    """What eval.py's identify was given and answered: {"batches": images per call, "names": its predictions in
    call order}."""
    seen = {}
    real = evaluate.identify

    def recording(images, *args, **kwargs):
        predicted = real(images, *args, **kwargs)
        seen.setdefault("batches", []).append(len(images))
        seen.setdefault("names", []).extend(predicted)
        return predicted
    monkeypatch.setattr(evaluate, "identify", recording)
    return seen


@pytest.mark.parametrize("compat", [False, True])
def test_eval_predictions_equal_the_face_loss_path(dark_set, retinaface_weights, facenet_file, detector, facenet,
                                                   recorded_predictions, capsys, compat):
    enhanced = dark_set / "dataset/LFW/SOTAs/Dark"
    assert evaluate.main(_argv(dark_set, retinaface_weights, facenet_file, *["--compat"] * compat)) == 0
    out = capsys.readouterr().out
    files = sorted(os.listdir(enhanced))
    files = listdir_order(enhanced, files) if compat else files  # eval.py's order
    assert recorded_predictions["batches"] == [3, 3, 3, 1] and len(recorded_predictions["names"]) == 10

    # the training path: FaceRecognitionLoss on the same images, in the same batches (a box's integer edge may
    # depend on the batch's rounding), against eval.py's database
    names = np.load(dark_set / "encoding/LFW_name.npy").tolist()
    loss = FaceRecognitionLoss(detector, facenet, torch.from_numpy(np.load(dark_set / "encoding/LFW_encoding.npy")))
    expected = []
    for start in range(0, len(files), 3):
        images = torch.stack([to_tensor(read_image(enhanced / f)) for f in files[start:start + 3]])
        labels = torch.tensor([names.index(identity_of(f)) for f in files[start:start + 3]])
        _, logits, found = loss(images, labels)
        expected += [names[int(row.argmax())] if hit else None for row, hit in zip(logits, found)]
    assert recorded_predictions["names"] == expected

    hits = [(p if p is not None or not compat else names[0]) == identity_of(f) for p, f in zip(expected, files)]
    line = (dark_set / "eval.txt").read_text().splitlines()[-1]
    assert f"top1={100 * sum(hits) / 10:.4f} correct={sum(hits)} top1_images=10 no_face={expected.count(None)}" in line
    if compat:
        assert f"top1_published={batch_mean_accuracy(hits):.4f}" in line
        assert f"LFW accuracy: {batch_mean_accuracy(hits)} (the published figure: the mean of 3 batches'" in out
    else:
        assert "top1_published" not in line and "LFW accuracy" not in out


# ---------------------------------------------------------------- no deletion, refusal, full disk

def test_database_build_removes_only_what_it_wrote_and_refuses_other_folders(tmp_path, face_photos):
    normal, database = tmp_path / "normal", tmp_path / "database"
    copy_faces(face_photos, normal, IDENTITIES[:3], 2, flat=True)
    build_database(normal, database)
    assert sorted(os.listdir(database)) == sorted([MANIFEST] + [f"{i}_0001.jpg" for i in IDENTITIES[:3]])

    # a gallery of the user's: refused in one line, before anything is written or removed
    gallery = tmp_path / "gallery"
    copy_faces(face_photos, gallery, IDENTITIES[:2], 3, flat=True)
    (gallery / "notes.txt").write_text("mine")
    before = sorted(os.listdir(gallery))
    with pytest.raises(face_database.FaceDatabaseError, match=r"holds .*_0001.jpg and 6 more files that no face "
                       "database build wrote") as e:
        build_database(normal, gallery)
    assert "\n" not in str(e.value) and sorted(os.listdir(gallery)) == before

    # a file of the user's beside the database's own: the next build refuses and keeps everything
    (database / "mine.jpg").write_bytes(b"x")
    (normal / f"{IDENTITIES[0]}_0001.jpg").unlink()
    with pytest.raises(ValueError, match="mine.jpg that no face database build wrote"):
        build_database(normal, database)
    assert (database / "mine.jpg").read_bytes() == b"x" and (database / f"{IDENTITIES[0]}_0001.jpg").exists()
    (database / "mine.jpg").unlink()
    build_database(normal, database)  # its own stale image is removed
    assert sorted(os.listdir(database)) == sorted([MANIFEST, f"{IDENTITIES[0]}_0002.jpg"]
                                                  + [f"{i}_0001.jpg" for i in IDENTITIES[1:3]])

    # a record naming files outside the folder is not one
    (database / MANIFEST).write_text('{"written": ["../normal/x.jpg"]}')
    with pytest.raises(ValueError, match="not a readable face database record"):
        build_database(normal, database)


def test_database_root_typo_keeps_the_data_set(dark_set, tmp_path, retinaface_weights, facenet_file):
    """--database_root dataset with the data set under another --dataset_root: dataset/LFW is a copy of the set."""
    shutil.copytree(dark_set / "dataset", tmp_path / "dataset")
    argv = _argv(dark_set, retinaface_weights, facenet_file, "--database_root", str(tmp_path / "dataset"),
                 "--encoding_root", str(tmp_path / "encoding"))
    before = sorted(p for p in (tmp_path / "dataset").rglob("*"))
    with pytest.raises(SystemExit, match=r"^error: .*dataset/LFW: holds .* that no face database build wrote; "
                       "it is built only in a new folder or one it made: choose another --database_root"):
        evaluate.main(argv)
    assert sorted(p for p in (tmp_path / "dataset").rglob("*")) == before
    assert not (tmp_path / "dataset/LFW" / MANIFEST).exists()


@pytest.mark.parametrize("failing", ["database", "encodings"])
def test_full_disk_while_writing_the_face_database(dark_set, tmp_path, retinaface_weights, facenet_file, monkeypatch,
                                                   failing):
    """A full disk while eval.py writes the database images or the encodings: one line, whole files only, no cache
    taken for a complete one; the next run builds it."""
    real, calls = face_database.atomic_write, []
    suffix = ".jpg" if failing == "database" else "_name.npy"

    def disk_full(path, write):  # the second database image, or the names after the encodings
        if str(path).endswith(suffix):
            calls.append(path)
        if str(path).endswith(suffix) and len(calls) == (2 if failing == "database" else 1):
            def half(f):
                f.write(b"half")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, half)
        return real(path, write)
    monkeypatch.setattr(face_database, "atomic_write", disk_full)
    argv = _argv(dark_set, retinaface_weights, facenet_file, "--database_root", str(tmp_path / "database"),
                 "--encoding_root", str(tmp_path / "encoding"))
    folder = tmp_path / ("database/LFW" if failing == "database" else "encoding")
    with pytest.raises(SystemExit, match=rf"^error: {folder}: cannot write the face "
                       rf"{failing} \(No space left on device\)") as e:
        evaluate.main(argv)
    assert "\n" not in str(e.value.code)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".tmp-") or p.read_bytes() == b"half"]
    assert not (tmp_path / "encoding/LFW_fingerprint.json").exists()

    if failing == "database":  # space again: the next run builds and scores
        monkeypatch.setattr(face_database, "atomic_write", real)
        assert evaluate.main(argv) == 0
        assert len(os.listdir(tmp_path / "database/LFW")) == len(IDENTITIES) + 1
