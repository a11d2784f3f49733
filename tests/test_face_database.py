"""Face database: identities from both layouts, the database folder (re-saved images), encodings built once,
reused while their inputs are unchanged, rebuilt when a database image or the FaceNet weights change; faceless
identities."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import utils.face_database as face_database
from conftest import IDENTITIES, copy_faces
from nets.facenet import load_facenet
from utils.face_database import MANIFEST, build_database, identity_of, load_encodings, resaved

IDS = tuple(IDENTITIES[:3])


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts the images passed to the FaceNet encoder."""
    calls = []
    real = face_database.encode_faces

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return real(images, *args, **kwargs)
    monkeypatch.setattr(face_database, "encode_faces", counting)
    return calls


def test_identity_of_both_layouts():
    assert identity_of("George_W_Bush/George_W_Bush_0001.jpg") == "George_W_Bush"
    assert identity_of("George_W_Bush_0001.jpg") == "George_W_Bush"
    assert identity_of("0042_3.png") == "0042"
    assert identity_of("solo.png") == "solo"


def test_database_holds_first_image_of_each_identity(tmp_path, face_photos):
    copy_faces(face_photos, tmp_path / "lfw", IDS, 3)
    copy_faces(face_photos, tmp_path / "flat", IDS, 3, flat=True)
    for layout in ("lfw", "flat"):  # flat in both layouts, as the published database
        entries = build_database(tmp_path / layout, tmp_path / f"db_{layout}")
        assert [(i, dst) for i, dst, _ in entries] == [(i, f"{i}_0001.jpg") for i in IDS]
    assert sorted(p.name for p in (tmp_path / "db_flat").iterdir()) == \
        sorted([MANIFEST] + [f"{i}_0001.jpg" for i in IDS])
    assert (tmp_path / "db_lfw" / f"{IDS[0]}_0001.jpg").read_bytes() == \
        resaved(tmp_path / "lfw" / IDS[0] / f"{IDS[0]}_0001.jpg") == entries[0][2]

    # a refresh removes the images it wrote that are no longer chosen
    (tmp_path / "flat" / f"{IDS[0]}_0001.jpg").unlink()
    build_database(tmp_path / "flat", tmp_path / "db_flat")
    assert sorted(p.name for p in (tmp_path / "db_flat").iterdir()) == \
        sorted([MANIFEST, f"{IDS[0]}_0002.jpg"] + [f"{i}_0001.jpg" for i in IDS[1:]])
    assert len(list((tmp_path / "flat").iterdir())) == 8
    with pytest.raises(ValueError, match="must not be"):
        build_database(tmp_path / "flat", tmp_path / "flat" / "db")


def test_encodings_built_reused_and_rebuilt_on_change(tmp_path, face_photos, detector, facenet, facenet_file,
                                                      encode_calls):
    normal, database, encoding = tmp_path / "normal", tmp_path / "database" / "Set", tmp_path / "encoding"
    copy_faces(face_photos, normal, IDS, 2, flat=True)
    facenet_copy = tmp_path / "facenet.pth"
    shutil.copyfile(facenet_file, facenet_copy)
    load = lambda net: load_encodings(normal, database, encoding, "Set", detector, net, "cpu", 8)

    first, names = load(facenet)
    assert names == list(IDS) and first.shape == (3, 128) and first.dtype == torch.float32
    assert encode_calls == [3]
    assert np.load(encoding / "Set_name.npy", allow_pickle=False).tolist() == list(IDS)
    assert np.load(encoding / "Set_encoding.npy", allow_pickle=False).shape == (3, 128)
    assert set(json.loads((encoding / "Set_fingerprint.json").read_text())) == \
        {"format", "order", "database", "pillow", "detector", "facenet", "alignment", "files"}

    again, names_again = load(facenet)  # unchanged inputs: read from the cache
    assert encode_calls == [3] and names_again == names and torch.equal(again, first)

    # a database image changes: the database folder and the encodings are rebuilt
    replacement = sorted((face_photos / IDS[1]).iterdir())[2].read_bytes()
    (normal / f"{IDS[1]}_0001.jpg").write_bytes(replacement)
    changed, _ = load(facenet)
    assert encode_calls == [3, 3]
    assert (database / f"{IDS[1]}_0001.jpg").read_bytes() == resaved(normal / f"{IDS[1]}_0001.jpg")
    assert not torch.allclose(changed[1], first[1]) and torch.allclose(changed[0], first[0], atol=1e-6)

    # the FaceNet weights file changes: rebuilt with the new network
    weights = torch.load(facenet_file, weights_only=True)
    weights["last_bn.bias"] = weights["last_bn.bias"] + 0.5
    torch.save(weights, facenet_copy)
    rebuilt, _ = load(load_facenet(facenet_copy, "mobilenet", "cpu"))
    assert encode_calls == [3, 3, 3] and not torch.allclose(rebuilt, changed)


def test_identity_without_face_is_left_out(tmp_path, face_photos, detector, facenet, capsys):
    normal = tmp_path / "normal"
    copy_faces(face_photos, normal, IDS[:2], 1)
    (normal / "Blank").mkdir()
    Image.new("RGB", (120, 120), (128, 128, 128)).save(normal / "Blank" / "Blank_0001.png")
    args = (detector, facenet, "cpu")

    encodings, names = load_encodings(normal, tmp_path / "db", tmp_path / "enc", "S", *args)
    assert names == list(IDS[:2]) and encodings.shape == (2, 128)
    assert "identity Blank left out" in capsys.readouterr().out

    for name in IDS[:2]:
        shutil.rmtree(normal / name)
    with pytest.raises(ValueError, match="no face found in any database image"):
        load_encodings(normal, tmp_path / "db", tmp_path / "enc", "S", *args)
