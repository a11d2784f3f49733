"""test.py and utils.lowlight as a user meets them: Ctrl-C and a writer killed end in one line and the summary, the
memory of a large image stays within what --tile's help states, an output folder records what made it and a run
of other settings never mixes with it, float images in 0..1, transparency kept, and tiles that show progress."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import test as test_script
from conftest import ROOT
from nets.enhance import EnhanceNet, enhance, enhance_uint8, init_weights, tiles
from utils.images import ImageReadError, ImageTooLarge, read_image, to_tensor, uint8_images, write_image
from utils.lowlight import main as lowlight_main
from utils.output_record import RECORD_NAME, read_record

# Runs test.py in a fresh process with its network replaced: 'stub' (no activations of its own: what test.py needs
# per pixel) or 'slow' (the real one, 0.3 s an image: a run long enough to interrupt, run as `python test.py`).
# 'stub' and 'real' print what main() added to the peak resident memory of the process after its imports.
DRIVER = r"""
import json, resource, runpy, sys, time
import torch, nets
kind, argv = sys.argv[1], sys.argv[2:]
load = nets.load
if kind == "stub":
    class Stub(torch.nn.Module):
        def forward(self, x):
            return x.clamp(0, 1), x
    nets.load = lambda *args: Stub()
if kind == "slow":
    def slow(*args):
        model = load(*args)
        forward = model.forward
        model.forward = lambda x: (time.sleep(0.3), forward(x))[1]
        return model
    nets.load = slow
    sys.argv = ["test.py", *argv]
    runpy.run_path("test.py", run_name="__main__")
import test
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
code = test.main(argv)
print(json.dumps({"added": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before}))
sys.exit(code)
"""


def driver(kind, *argv):
    return subprocess.Popen([sys.executable, "-c", DRIVER, kind, *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = init_weights(EnhanceNet()).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    return model, tmp_path / "w.pth"


def images(folder, names, size=(24, 32), seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 90, (*size, 3), dtype=np.uint8)).save(folder / name)


def argv_of(src, dst, checkpoint, *extra):
    return ["--underexposed_path", str(src), "--enhanced_path", str(dst), "--enhance_checkpoint", str(checkpoint),
            "--device", "cpu", *map(str, extra)]


def run(capsys, *argv):
    code = test_script.main(list(argv))
    return code, capsys.readouterr().out.splitlines()


def contents(folder):
    """{relative path: bytes} of every file below folder but its record."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != RECORD_NAME}


def outputs(folder):
    """{relative path: RGB array} of every file below folder but its record; each must decode whole."""
    return {p.relative_to(folder).as_posix(): read_image(str(p)) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != RECORD_NAME}


# ---------------------------------------------------------------- stops: Ctrl-C, a writer killed

def test_ctrl_c_ends_with_one_line_and_the_summary_and_a_rerun_finishes(tmp_path, weights, capsys):
    _, checkpoint = weights
    names = [f"img_{i:02d}.png" for i in range(12)]
    images(tmp_path / "in", names)
    argv = argv_of(tmp_path / "in", tmp_path / "out", checkpoint, "--writers", 3, "--num_workers", 1)
    run_ = driver("slow", *argv)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "out").glob("*.png")) and run_.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run_.pid, signal.SIGINT)  # Ctrl-C in a terminal: every process of the group, the writers too
    out, err = run_.communicate(timeout=300)
    assert run_.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = out.splitlines()
    assert lines[-2] == "stopped: interrupted (Ctrl-C); every file written is whole, and the same command writes " \
                        "the rest"
    done = re.fullmatch(r"done: (\d+) written, 0 kept, 0 failed, 0 other entries passed over; (\d+) of the 12 files "
                        r"asked for are missing", lines[-1])
    assert done and int(done[1]) + int(done[2]) == 12 and 1 <= int(done[1]) < 12, lines[-1]
    assert len(outputs(tmp_path / "out")) == int(done[1])
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == [RECORD_NAME]

    code, lines = run(capsys, *argv)  # the same command writes the rest
    assert code == 0 and lines[-1] == f"done: {done[2]} written, {done[1]} kept, 0 failed, 0 other entries passed over"
    assert sorted(outputs(tmp_path / "out")) == names


def kill_own_process_at_c(enhanced, output=None, *rest):
    """test.save, but the writer process writing c.png leaves half a file (named after the run's temporary prefix,
    the argument before fsync) and is killed, as the out-of-memory killer kills (test.py pickles this by name into
    its writer processes)."""
    if output and output.endswith("c.png") and os.getpid() != TEST_PROCESS:
        with open(os.path.join(os.path.dirname(output), rest[-2] + "half"), "wb") as f:
            f.write(b"half an image")
        os.kill(os.getpid(), signal.SIGKILL)
    return SAVE(enhanced, output, *rest)


TEST_PROCESS, SAVE = os.getpid(), test_script.save


def test_a_writer_killed_ends_with_one_line_and_the_summary(tmp_path, weights, capsys, monkeypatch):
    _, checkpoint = weights
    names = [f"{c}.png" for c in "abcdef"]
    images(tmp_path / "in", names)
    argv = argv_of(tmp_path / "in", tmp_path / "out", checkpoint, "--writers", 2, "--num_workers", 0)
    monkeypatch.setattr(test_script, "save", kill_own_process_at_c)
    code, lines = run(capsys, *argv)
    assert code == 1
    assert lines[-2] == "stopped: a writer process died (killed, as the system does when memory runs out); every " \
                        "file written is whole, and the same command writes the rest"
    done = re.fullmatch(r"done: (\d+) written, 0 kept, 0 failed, 0 other entries passed over; (\d+) of the 6 files "
                        r"asked for are missing", lines[-1])
    written = outputs(tmp_path / "out")  # a write that ended as its writer was stopped may not be counted
    assert done and len(written) == 6 - int(done[2]) and int(done[1]) <= len(written) and "c.png" not in written
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == [RECORD_NAME]  # no half file

    monkeypatch.setattr(test_script, "save", SAVE)
    code, lines = run(capsys, *argv)
    assert code == 0 and sorted(outputs(tmp_path / "out")) == names


# ---------------------------------------------------------------- memory of large images

def test_memory_stays_within_what_the_tile_help_states(tmp_path, weights):
    _, checkpoint = weights
    rng = np.random.default_rng(0)
    (tmp_path / "large").mkdir()
    Image.fromarray(rng.integers(0, 90, (2000, 2000, 3), dtype=np.uint8)).save(tmp_path / "large" / "a.bmp")
    images(tmp_path / "small", ["a.png"], size=(160, 160))
    # both at once: what a run adds per pixel of a large image (the network's own activations replaced by none),
    # and the network's activations in the tiles of a small one
    large = driver("stub", *argv_of(tmp_path / "large", tmp_path / "out_large", checkpoint, "--tile", 256))
    small = driver("real", *argv_of(tmp_path / "small", tmp_path / "out_small", checkpoint, "--tile", 64))
    added = {}
    for name, process, pixels, tile in (("large", large, 2000 * 2000, 256), ("small", small, 160 * 160, 64)):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        added[name] = json.loads(out.splitlines()[-1])["added"]
    # the help's figure less the libraries: per pixel of the image, the run's own, and the tile's activations
    assert added["large"] <= test_script.MEMORY_OF_RUN + test_script.MEMORY_PER_PIXEL * 2000 * 2000, added
    assert added["small"] <= test_script.memory_needed(160 * 160, 64) - test_script.MEMORY_OF_IMPORTS, added
    assert read_image(str(tmp_path / "out_large" / "a.bmp")).shape == (2000, 2000, 3)


def test_pillow_limit_is_lifted_and_an_image_memory_cannot_hold_is_refused_before_decoding(tmp_path, weights,
                                                                                            capsys):
    _, checkpoint = weights
    assert Image.MAX_IMAGE_PIXELS is None  # utils.images checks sizes itself
    images(tmp_path / "in", ["a.png", "b.png"], size=(30, 40))
    with pytest.raises(ImageTooLarge, match=r"a\.png: 40x30 image, more than the 1000 pixels allowed"):
        read_image(str(tmp_path / "in" / "a.png"), max_pixels=1000)
    assert read_image(str(tmp_path / "in" / "a.png"), max_pixels=1200).shape == (30, 40, 3)

    # a PNG that declares 200000 x 200000 pixels: refused from its header, naming the memory it would need
    png = (tmp_path / "in" / "a.png").read_bytes()
    header = png[:16] + (200000).to_bytes(4, "big") * 2 + png[24:29]
    header = header[:29] + zlib.crc32(header[12:29]).to_bytes(4, "big") + png[33:]
    (tmp_path / "in" / "bomb.png").write_bytes(header)
    needed = test_script.memory_needed(200000 ** 2, 512) / 2 ** 30
    code, lines = run(capsys, *argv_of(tmp_path / "in", tmp_path / "out", checkpoint))
    assert code == 1
    assert f"failed {tmp_path / 'in' / 'bomb.png'}: a 200000x200000 image needs about {needed:.1f} GiB of memory to " \
           "enhance, more than this machine's memory (" in "\n".join(lines)
    assert any(line.endswith(f"; --max_pixels {200000 ** 2} reads it anyway") for line in lines)
    code, lines = run(capsys, *argv_of(tmp_path / "in", tmp_path / "out2", checkpoint, "--max_pixels", 1000))
    assert any(line.startswith(f"failed {tmp_path / 'in' / 'b.png'}: a 40x30 image needs about") and
               line.endswith("more than --max_pixels 1000 allows; --max_pixels 1200 reads it anyway") for line in lines)


# ---------------------------------------------------------------- what made an output folder

def test_a_run_of_other_weights_or_settings_never_mixes_with_a_folder(tmp_path, weights, capsys):
    _, checkpoint = weights
    torch.manual_seed(1)
    torch.save(init_weights(EnhanceNet()).state_dict(), tmp_path / "other.pth")
    images(tmp_path / "in", ["a.png", "sub/b.png"])
    images(tmp_path / "normal", ["a.png", "sub/b.png"], seed=1)
    src, dst, cmp = tmp_path / "in", tmp_path / "out", ["--comparison_path", tmp_path / "cmp", "--writers", 1]
    assert run(capsys, *argv_of(src, dst, checkpoint, *cmp))[0] == 0
    record = read_record(dst)
    assert record["made_by"]["command"] == "test.py" and len(record["made_by"]["weights_sha256"]) == 64
    assert record["made_by"]["input"] == os.path.realpath(src) and not record["replacing"]
    first = {folder: contents(tmp_path / folder) for folder in ("out", "cmp")}
    assert run(capsys, *argv_of(src, dst, checkpoint, *cmp))[1][-1].startswith("done: 0 written, 2 kept")

    for extra, says in (
            (["--enhance_checkpoint", tmp_path / "other.pth"], r"--enhanced_path \S+ holds outputs of other settings: "
             r"weights_sha256 \(was [0-9a-f]{12}, now [0-9a-f]{12}\); --overwrite replaces them, or choose another"),
            (["--precision", "bf16"], r"precision \(was tf32, now bf16\)"),
            (["--underexposed_path", tmp_path / "normal"], r"input \(was \S+/in, now \S+/normal\)"),
            (["--normal_path", tmp_path / "in"], r"--comparison_path \S+ holds outputs of other settings: normal")):
        with pytest.raises(SystemExit, match=says) as stop:
            test_script.main(argv_of(src, dst, checkpoint, *cmp, *extra))
        assert "\n" not in str(stop.value.code)
        assert {folder: contents(tmp_path / folder) for folder in ("out", "cmp")} == first  # nothing replaced

    # --overwrite replaces every output (marked 'replacing' until it has); then the new weights resume as usual
    other = argv_of(src, dst, tmp_path / "other.pth", *cmp)
    code, lines = run(capsys, *other, "--overwrite")
    assert code == 0 and lines[-1].startswith("done: 2 written, 0 kept")
    assert all(contents(dst)[rel] != first["out"][rel] for rel in first["out"])
    assert read_record(dst)["made_by"]["weights_sha256"] != record["made_by"]["weights_sha256"]
    assert not read_record(dst)["replacing"] and not read_record(tmp_path / "cmp")["replacing"]
    assert run(capsys, *other)[0] == 0

    # an --overwrite run that did not finish leaves the mark: only --overwrite goes on
    record = read_record(dst)
    (dst / RECORD_NAME).write_text(json.dumps({**record, "replacing": True}))
    with pytest.raises(SystemExit, match=r"an --overwrite run with these settings into it did not finish"):
        test_script.main(other)

    # a folder of images without a record: someone else's, refused; a folder with other files only is taken
    images(tmp_path / "theirs", ["x.jpg"])
    with pytest.raises(SystemExit, match=r"--enhanced_path \S+theirs holds 1 images without a record of what made "
                                         r"them \(\.made_by\.json\); --overwrite replaces them"):
        test_script.main(argv_of(src, tmp_path / "theirs", checkpoint))
    code, lines = run(capsys, *argv_of(src, tmp_path / "theirs", checkpoint, "--overwrite"))
    assert code == 0 and f"note: 1 images in {tmp_path / 'theirs'} are not outputs of this run and stay as they are " \
                          f"(first: {tmp_path / 'theirs' / 'x.jpg'})" in lines
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("mine")
    assert run(capsys, *argv_of(src, tmp_path / "notes", checkpoint))[0] == 0
    assert (tmp_path / "notes" / "README.txt").read_text() == "mine"


def test_lowlight_of_another_mode_or_seed_never_mixes_with_a_folder(tmp_path, capsys):
    images(tmp_path / "normal", ["a.png", "b.png"], seed=2)
    argv = ["--normal_path", str(tmp_path / "normal"), "--underexposed_path", str(tmp_path / "dark")]
    assert lowlight_main(argv) == 0
    first = contents(tmp_path / "dark")
    assert read_record(tmp_path / "dark")["made_by"] == {
        "command": "utils.lowlight", "input": os.path.realpath(tmp_path / "normal"), "mode": "gamma", "seed": 1,
        "gamma": None, "noise_std": None, "scale": None}
    for extra, says in ((["--seed", "2"], r"seed \(was 1, now 2\)"),
                        (["--mode", "scale"], r"mode \(was gamma, now scale\)"),
                        (["--gamma", "2.2"], r"gamma \(was None, now 2\.2\)")):
        with pytest.raises(SystemExit, match=r"^error: --underexposed_path \S+dark holds outputs of other settings: "
                                             + says + "; --overwrite replaces them"):
            lowlight_main(argv + extra)
        assert contents(tmp_path / "dark") == first
    assert lowlight_main(argv + ["--seed", "2", "--overwrite"]) == 0
    assert read_record(tmp_path / "dark")["made_by"]["seed"] == 2 and not read_record(tmp_path / "dark")["replacing"]
    assert all(contents(tmp_path / "dark")[rel] != first[rel] for rel in first)
    assert lowlight_main(argv + ["--seed", "2"]) == 0 and capsys.readouterr().out.splitlines()[-1].startswith(
        "done: 0 written")


# ---------------------------------------------------------------- float images, transparency, tiles

def test_float_images_are_read_from_0_to_1_when_they_lie_there(tmp_path):
    said = []

    def grey(values):
        Image.fromarray(np.array(values, np.float32)).save(tmp_path / "f.tif")
        image = read_image(str(tmp_path / "f.tif"), say=said.append)
        assert (image == image[..., :1]).all()
        return image[..., 0].tolist()
    assert grey([[0.0, 0.5, 1.0]]) == [[0, 128, 255]] and said == []  # 0..1: the usual convention
    assert grey([[0.0, 0.02, 0.25]]) == [[0, 5, 64]] and said == []  # a dark 0..1 image stays as it is
    assert grey([[0.0, 127.6, 255.0]]) == [[0, 128, 255]] and said == []  # 0..255: Pillow's own scale
    assert grey([[0.0, 0.5, 1.5]]) == [[0, 0, 2]]  # just above 1: read as 0..255, with a line saying so
    assert said == [f"note {tmp_path / 'f.tif'}: float pixel values up to 1.5, just above 1: read as 0..255 (nearly "
                    "black); a 0..1 image must lie within 0..1 to be read as one (clip it)"]
    Image.fromarray(np.array([[0.5, -0.1]], np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f\.tif: pixel values outside 0\.\.255"):
        read_image(str(tmp_path / "f.tif"))


def test_transparency_is_kept_in_the_outputs(tmp_path, weights, capsys):
    model, checkpoint = weights
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgba).save(tmp_path / "in" / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]]).save(tmp_path / "in" / "grey_alpha.png")  # mode LA
    Image.fromarray(rgba).save(tmp_path / "in" / "rgba.tif")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "in" / "opaque.png")
    assert run(capsys, *argv_of(tmp_path / "in", tmp_path / "out", checkpoint))[0] == 0
    for name in ("rgba.png", "grey_alpha.png", "rgba.tif"):
        rgb, alpha = read_image(str(tmp_path / "in" / name), with_alpha=True)
        written = Image.open(tmp_path / "out" / name)
        assert written.mode == "RGBA", name
        with torch.no_grad():
            expected = uint8_images(model(to_tensor(rgb)[None])[0][0]).numpy()
        np.testing.assert_array_equal(np.asarray(written)[..., 3], alpha, err_msg=name)
        np.testing.assert_array_equal(np.asarray(written)[..., :3], expected, err_msg=name)
    assert Image.open(tmp_path / "out" / "opaque.png").mode == "RGB"

    assert lowlight_main(["--normal_path", str(tmp_path / "in"), "--underexposed_path", str(tmp_path / "dark")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "dark" / "rgba.png"))[..., 3], rgba[..., 3])


def test_tiles_give_the_whole_image_bytes_and_show_progress(tmp_path, weights, capsys):
    model, checkpoint = weights
    image = np.random.default_rng(4).integers(0, 90, (40, 70, 3), dtype=np.uint8)
    calls = []
    (index, tiled), = enhance_uint8(model, [image], torch.device("cpu"), tile=24,
                                    progress=lambda done, count: calls.append((done, count)))
    (_, whole), = enhance_uint8(model, [image], torch.device("cpu"))
    x = to_tensor(image)[None]
    assert index == [0] and torch.equal(tiled, uint8_images(enhance(model, x, tile=24)))  # the float tiles' bytes
    assert (tiled.int() - whole.int()).abs().max() <= 1  # and the whole image's, to float32 rounding
    assert calls == [(k, 6) for k in range(1, 7)] and len(tiles(40, 70, 24)) == 6

    write_image(image, str(tmp_path / "in" / "a.png"))
    assert test_script.main(argv_of(tmp_path / "in", tmp_path / "out", checkpoint, "--tile", 24, "--writers", 1)) == 0
    err = capsys.readouterr().err
    assert "0/6 [00:00<?, ?tile/s]" in err, err  # a second bar, of the image's tiles
    np.testing.assert_array_equal(read_image(str(tmp_path / "out" / "a.png")), tiled[0].numpy())


def test_the_largest_image_memory_holds():
    for memory, tile in ((24 * 2 ** 30, 512), (2 ** 30, 512), (2 ** 30, 64)):
        pixels = test_script.largest_image(memory, tile)
        assert test_script.memory_needed(pixels, tile) <= memory < test_script.memory_needed(pixels + 1, tile)
    assert test_script.largest_image(24 * 2 ** 30, 512) > 20000 * 20000  # the size Pillow refused
