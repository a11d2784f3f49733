"""A newcomer's first hour: every command written in README.md or a docstring runs as written from a fresh clone
(or stops at once with one line naming its fix), every command line answers --help at once with a help text and a
default for each flag, every missing data set or checkpoint names the command that fetches it, and training logs
the last, shorter window of each epoch."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from conftest import ROOT
from nets.losses import WEIGHTS
from utils.checks import ArgumentParser, check_checkpoints, check_paths

NOT_IN_A_CLONE = {".git", ".venv", "__pycache__", ".pytest_cache", "log", "results", "database", "encoding"}
HEAVY = ("torch", "torchvision", "cv2", "skimage", "gdown", "requests")


def clone_files(root=ROOT):
    """The files a fresh clone has (tracked or not ignored): every file outside the output folders, of checkpoint/
    and dataset/ only what .gitignore keeps (the READMEs, dataset/samples without SOTAs/, make_demo_data.py)."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if name not in NOT_IN_A_CLONE)  # .ci/run's .venv too
        yield from (Path(folder, name) for name in sorted(files) if _in_a_clone(Path(folder, name).relative_to(root)))


def _in_a_clone(rel):
    """Whether the file rel (outside the output folders) is one a clone has (see clone_files)."""
    parts = rel.parts
    if rel.suffix == ".pyc":
        return False
    if parts[0] == "checkpoint":
        return parts[1:] == ("README.md",)
    if parts[0] == "dataset":
        return parts[1] in ("README.md", "make_demo_data.py") or parts[1] == "samples" and parts[2] != "SOTAs"
    return True


def command_lines():
    """Every file with a command line: (how to start it, the file)."""
    for path in clone_files():
        rel = path.relative_to(ROOT)
        if path.suffix == ".py" and rel.parts[0] != "tests" and 'if __name__ == "__main__":' in path.read_text():
            module = ".".join(rel.with_suffix("").parts)
            yield (["-m", module] if rel.parts[0] == "utils" else [str(rel)]), path


CLIS = list(command_lines())


# ---------------------------------------------------------------- --help of every command line

@pytest.mark.parametrize("start, path", CLIS, ids=[str(p.relative_to(ROOT)) for _, p in CLIS])
def test_help_answers_before_heavy_imports_and_writes_nothing(start, path, tmp_path):
    target = start if start[0] == "-m" else [str(ROOT / start[0])]
    done = subprocess.run([sys.executable, "-X", "importtime", *target, "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(name for name in imported if name.split(".")[0] in HEAVY)
    assert done.returncode == 0 and heavy == [] and done.stdout.startswith("usage:"), (done.returncode, heavy[:3])
    assert list(tmp_path.iterdir()) == []  # python -m utils.face_photos --help once wrote a folder named --help


PARSER_DUMP = """
import json, runpy, sys
sys.path.insert(0, {root!r})
from utils import checks

def dump(parser, args=None, namespace=None):
    print(json.dumps({{"description": parser.description, "actions": [
        {{"flags": a.option_strings or [a.dest], "help": a.help}} for a in parser._actions]}}))
    sys.exit(0)

checks.ArgumentParser.parse_args = dump
target = sys.argv[1]
sys.argv = [target]
runpy.run_module(target[3:], run_name="__main__", alter_sys=True) if target.startswith("-m ") else \\
    runpy.run_path(target, run_name="__main__")
"""


@pytest.mark.parametrize("start, path", CLIS, ids=[str(p.relative_to(ROOT)) for _, p in CLIS])
def test_every_flag_has_a_help_text_and_the_description_is_the_whole_docstring(start, path, tmp_path):
    target = f"-m {start[1]}" if start[0] == "-m" else str(ROOT / start[0])
    done = subprocess.run([sys.executable, "-c", PARSER_DUMP.format(root=str(ROOT)), target], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout, f"{path} does not parse with utils.checks.ArgumentParser"
    parser = json.loads(done.stdout.splitlines()[-1])
    assert parser["description"] == ast.get_docstring(ast.parse(path.read_text()), clean=False)
    assert [a["flags"] for a in parser["actions"] if not (a["help"] or "").strip()] == []


def test_help_shows_each_default_and_the_description_as_written(capsys):
    p = ArgumentParser(description="First line.\n\n    python x.py --n 2     # a command, kept as written\n")
    p.add_argument("--n", type=int, default=0, help="count")
    p.add_argument("--files", nargs="+", default=["a.pth", "b.pth"], help="files")
    p.add_argument("--rate", type=float, default=5e-5, help="rate in %%")
    p.add_argument("--name", default=None, help="name (default: the folder's)")
    p.add_argument("--fast", action="store_true", help="switch")
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "First line. python x.py --n 2 # a command, kept as written" in text
    for shown in ("count (default: 0)", "files (default: a.pth b.pth)", "rate in % (default: 5e-05)",
                  "name (default: the folder's) --fast switch"):
        assert shown in text, shown


# ---------------------------------------------------------------- every "not found" names its fix

def test_missing_data_sets_name_the_download_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fix = "is a published data set: fetch it with `python -m utils.download --datasets "
    for folder, line in (
            ("dataset/LaPa-Face/underexposed", f"dataset/LaPa-Face {fix}LaPa-Face`"),
            ("dataset/Contrast/high", f"dataset/Contrast {fix}Contrast`"),
            ("dataset/CASIA-Test/SOTAs/Ours", f"dataset/CASIA-Test {fix}CASIA-Test`"),
            ("data/LFW/normal", f"data/LFW {fix}LFW --dataset_root data`")):
        with pytest.raises(SystemExit) as stop:
            check_paths(reads=[("--x", folder)])
        assert stop.value.code == f"error: {folder}: folder not found (--x); {line}"
    os.makedirs("dataset/CASIA-Test/normal")  # the set is there: a method's missing output is not fetched
    for folder in ("dataset/CASIA-Test/SOTAs/Ours", "dataset/Mine/underexposed", "photos"):
        with pytest.raises(SystemExit) as stop:
            check_paths(reads=[("--x", folder)])
        assert stop.value.code == f"error: {folder}: folder not found (--x)"


def test_missing_checkpoints_name_the_download_and_the_bundled_detector(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cases = {
        ("--enhance_checkpoint", "checkpoint/Low-FaceNet.pth", "Low-FaceNet.pth"):
            "checkpoint/Low-FaceNet.pth: checkpoint not found (--enhance_checkpoint); fetch it with "
            "`python -m utils.download`",
        ("--enhance_checkpoint", "runs/epoch3.pth", "Low-FaceNet.pth"):
            "runs/epoch3.pth: checkpoint not found (--enhance_checkpoint); fetch the published one with "
            "`python -m utils.download` (it writes checkpoint/Low-FaceNet.pth)",
        ("--retinaface_checkpoint", "checkpoint/Retinaface_mobilenet0.25.pth", "Retinaface_mobilenet0.25.pth"):
            "checkpoint/Retinaface_mobilenet0.25.pth: checkpoint not found (--retinaface_checkpoint); fetch it with "
            "`python -m utils.download`; for trials, the published detector ships with the tests: "
            "--retinaface_checkpoint tests/weights/Retinaface_mobilenet0.25.pth",
        ("--vgg_checkpoint", "mine.pth", None): "mine.pth: checkpoint not found (--vgg_checkpoint)",
    }
    for entry, line in cases.items():
        with pytest.raises(SystemExit) as stop:
            check_checkpoints([("--x", str(tmp_path), None), entry])  # a folder is not a checkpoint either
        assert stop.value.code == f"error: {str(tmp_path)}: checkpoint not found (--x)"
        with pytest.raises(SystemExit) as stop:
            check_checkpoints([entry])
        assert stop.value.code == f"error: {line}"
    check_checkpoints([("--retinaface_checkpoint", "tests/weights/Retinaface_mobilenet0.25.pth", "x"),
                       ("--vgg_checkpoint", None, None)])  # present, or not asked for: no exit


# ---------------------------------------------------------------- every written command, from a fresh clone

COMMAND = re.compile(r"(?:[A-Z_]+=\S+ )*(?:python3?|\.venv/bin/\S+|torchrun|tensorboard) (?:-|\S+\.py|install )")


def commands_in(text):
    """The shell commands of a text: continuation lines joined, comments and '$ ' prompts dropped, && split."""
    found = []
    for line in re.sub(r"\\\n\s*", "", text).splitlines():
        line = re.sub(r"\s+#.*$", "", line.strip()).removeprefix("$ ")
        found += [" ".join(part.split()) for part in line.split(" && ") if COMMAND.match(part.strip())]
    return found


def written_commands():
    """Every command of README.md's code blocks and of the docstrings of the clone's Python files (not of the test
    modules, whose docstrings describe tests), in order, each once."""
    readme = (ROOT / "README.md").read_text()
    found = commands_in("\n".join(re.findall(r"^```(?:bash)?\n(.*?)^```", readme, re.S | re.M)))
    for path in clone_files():
        if path.suffix == ".py" and not path.name.startswith("test_"):
            tree = ast.parse(path.read_text())
            for node in [tree, *ast.walk(tree)]:
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                    found += commands_in(ast.get_docstring(node) or "")
    return list(dict.fromkeys(found))


RUNS, STARTS, EXTERNAL = "runs", "starts", "external"
FETCH = r"; dataset/{0} is a published data set: fetch it with `python -m utils.download --datasets {0}`"
NO_ENHANCER = r"checkpoint/Low-FaceNet.pth: checkpoint not found \(--enhance_checkpoint\); fetch it with " \
              r"`python -m utils.download`"
NO_LAPA = r"dataset/LaPa-Face/underexposed: folder not found \(the training set's underexposed \(--dataset_name\)\)" \
          + FETCH.format("LaPa-Face")
NO_OUTPUT = r"dataset/{0}/SOTAs/Ours: folder not found \(the enhanced images of --method_name; write them with " \
            r"test.py or utils.baselines\)"
NO_METHODS = r"dataset/{0}: neither SOTAs/ method folders nor underexposed/ to score \(--method_name all\); fetch the " \
             r"set with `python -m utils.download --datasets {0}`"
NO_UPSTREAM = r"UPSTREAM: not a checkout of the published code \(no model.py\); get one with `git clone " \
              r"https://github.com/fanyihua0309/Low-FaceNet UPSTREAM`"
NO_CASIA = r"dataset/CASIA-Test/underexposed: folder not found \(--underexposed_path\)" + FETCH.format("CASIA-Test")

# How each written command is checked in a fresh clone, in the order written:
#   RUNS (or (RUNS, tiny settings added)): it runs to the end, exit status 0;
#   STARTS: every check before torch passes (a run too long for a test, one needing the network or a GPU): it
#       reaches the import of torch or a network connection, where it is stopped;
#   a regular expression: it needs what a clone lacks and stops at once (before torch) with exit status 1 and
#       that one line, 'error: ...', which names the fix;
#   EXTERNAL: not the project's (venv, pip, pytest, tensorboard): what it names exists.
EXPECTED = {
    "python3 -m venv .venv": EXTERNAL,
    ".venv/bin/pip install -r requirements.txt": EXTERNAL,
    ".venv/bin/pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu":
        EXTERNAL,
    ".venv/bin/python -m utils.download": STARTS,
    ".venv/bin/python test.py --underexposed_path dataset/samples/underexposed --enhanced_path "
    "dataset/samples/SOTAs/Ours --comparison_path results/samples": NO_ENHANCER,
    ".venv/bin/python -m pytest -q tests": EXTERNAL,
    "python -m utils.download": STARTS,
    "python -m utils.download --datasets CASIA-Test LFW": STARTS,
    "python test.py --underexposed_path dataset/CASIA-Test/underexposed --enhanced_path dataset/CASIA-Test/SOTAs/Ours "
    "--enhance_checkpoint checkpoint/Low-FaceNet.pth --device auto --batch_size 1": NO_CASIA,
    "python test.py --device cuda --batch_size 16 --precision bf16": NO_CASIA,
    "python eval.py --dataset_name CASIA-Test --method_name Ours": NO_OUTPUT.format("CASIA-Test")
    + FETCH.format("CASIA-Test"),
    "python eval.py --dataset_name LFW --method_name Ours --compat": NO_OUTPUT.format("LFW") + FETCH.format("LFW"),
    "python eval.py --dataset_name CelebA-Test --method_name Ours": NO_OUTPUT.format("CelebA-Test")
    + FETCH.format("CelebA-Test"),
    "python train.py": NO_LAPA,
    "python train.py --batch_size 8 --device cuda --num_workers 8": NO_LAPA,
    "python train.py --resume": r"checkpoint/LLE/resume.pth: no resume point to continue from \(--resume\); name one "
                                r"with --resume_checkpoint",
    "python train.py --val_dataset LaPa-Test --val_every 1 --best_metric face_acc --preview_images 4": NO_LAPA,
    "tensorboard --logdir log/tensorboard": EXTERNAL,
    "torchrun --standalone --nproc_per_node 4 train.py --batch_size 2": NO_LAPA,
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py --batch_size 2":
        NO_LAPA,
    "python train.py --precision bf16 --compile": NO_LAPA,
    "python -m utils.lowlight --normal_path dataset/samples/normal --underexposed_path results/samples_dark --mode "
    "gamma --seed 1": RUNS,
    "ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$t .venv/bin/python -m pytest -q tests/test_core_parity.py "
    "tests/test_deeplab_unique.py tests/test_facenet.py tests/test_retinaface.py tests/test_face_database.py":
        EXTERNAL,
    "python benchmarks/benchmark.py --json benchmarks/results_cpu.json": STARTS,
    "python benchmarks/benchmark.py": STARTS,
    "python benchmarks/benchmark.py --quick": STARTS,
    "python benchmarks/benchmark.py --device cuda --precision bf16 --json benchmarks/cuda.json": STARTS,
    "python benchmarks/benchmark.py --device cuda --full --json benchmarks/results_cuda.json": STARTS,
    "python benchmarks/benchmark.py --device cuda --precision tf32 --compile --json benchmarks/cuda_tf32.json": STARTS,
    "python benchmarks/demo_quality.py --enhance_checkpoint checkpoint/Low-FaceNet.pth checkpoint/LLE/epoch99.pth":
        NO_ENHANCER,
    "python dataset/make_demo_data.py": (RUNS, "--images", "2", "--contrast", "4"),
    "python train.py --dataset_name Demo-Astronaut --contrast_positive_path dataset/Demo-Contrast/high "
    "--contrast_negative_path dataset/Demo-Contrast/low --crop_size 128 --batch_size 2 --epoch_num 2 --vgg_checkpoint "
    "checkpoint/demo_vgg16_luminance.pth --facenet_checkpoint checkpoint/demo_facenet_random.pth "
    "--retinaface_checkpoint tests/weights/Retinaface_mobilenet0.25.pth --checkpoint_root checkpoint/demo/ "
    "--log_path log/demo/train.txt --num_workers 1 --log_every 20": STARTS,
    "python benchmarks/demo_quality.py --enhance_checkpoint checkpoint/demo/epoch0.pth checkpoint/demo/epoch1.pth":
        r"checkpoint/demo/epoch0.pth: checkpoint not found \(--enhance_checkpoint\); fetch the published one with "
        r"`python -m utils.download` \(it writes checkpoint/Low-FaceNet.pth\)",
    "python dataset/samples/make_samples.py": RUNS,
    "python eval.py --dataset_name CASIA-Test --method_name Ours --facenet_checkpoint checkpoint/facenet_mobilenet.pth":
        NO_OUTPUT.format("CASIA-Test") + FETCH.format("CASIA-Test"),
    "python eval.py --dataset_name CelebA-Test --method_name Ours --lpips --fid": NO_OUTPUT.format("CelebA-Test")
    + FETCH.format("CelebA-Test"),
    "python eval.py --dataset_name real --method_name Ours": NO_OUTPUT.format("real"),
    "python eval.py --dataset_name samples": NO_OUTPUT.format("samples"),
    "python test.py --underexposed_path dataset/CASIA-Test/underexposed --enhanced_path dataset/CASIA-Test/SOTAs/Ours "
    "--enhance_checkpoint checkpoint/Low-FaceNet.pth": NO_CASIA,
    "python train.py --val_dataset LaPa-Test": NO_LAPA,
    "python train.py --batch_size 32 --device cuda --num_workers 8 --precision bf16 --compile": NO_LAPA,
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py": NO_LAPA,
    "python -m utils.face_photos results/face_photos": RUNS,
    "python eval.py --dataset_name CASIA-Test LaPa-Test --method_name all": NO_METHODS.format("CASIA-Test"),
    "python eval.py --dataset_name CASIA-Test LaPa-Test --method_name all --figure": NO_METHODS.format("CASIA-Test"),
    "python eval.py --dataset_name CASIA-Test --method_name all --protocol verification --gallery normal":
        NO_METHODS.format("CASIA-Test"),
    "python train.py --overwrite": NO_LAPA,
    "python -m utils.baselines --dataset_name samples --methods gamma he clahe lime": RUNS,
    "python eval.py --dataset_name samples --method_name all --figure": RUNS,
    "python -m utils.baselines --dataset_name CASIA-Test --methods lime --dataset_root dataset":
        r"dataset/CASIA-Test/underexposed: folder not found \(the low-light images of --dataset_name\); fetch the data "
        r"set with `python -m utils.download --datasets CASIA-Test`, or make one with utils.lowlight",
    "python tests/reference/make_reference.py UPSTREAM OUT 1 --inputs tests/reference": NO_UPSTREAM,
    "python tests/reference/make_reference.py UPSTREAM OUT 1 --compare tests/reference": NO_UPSTREAM,
    "python tests/reference/make_reference.py UPSTREAM OUT 2": NO_UPSTREAM,
    "python -m utils.lowlight --normal_path dataset/CASIA-Test/normal --underexposed_path "
    "dataset/CASIA-Test/underexposed --mode gamma --seed 1":
        r"dataset/CASIA-Test/normal: folder not found \(--normal_path\)" + FETCH.format("CASIA-Test"),
}

# Runs a script or module as `python` would, stopping it (status 0, a line 'REACHED torch' or 'REACHED network') at
# the first import of torch or the first network connection.
UNTIL_TORCH = """
import importlib.abc, os, runpy, socket, sys

class Reached(BaseException):
    pass

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise Reached("torch")

def no_network(*args, **kwargs):
    raise Reached("network")

sys.meta_path.insert(0, NoTorch())
socket.socket.connect = socket.create_connection = no_network
target, *argv = sys.argv[1:]
try:
    if target == "-m":
        sys.path.insert(0, os.getcwd())
        sys.argv = [argv[0], *argv[1:]]
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        sys.argv = [target, *argv]
        runpy.run_path(target, run_name="__main__")
except Reached as e:
    print(f"REACHED {e}")
"""


def script_and_arguments(command):
    """(['-m', module] or [script.py], arguments) of a python or torchrun command."""
    words = command.split()
    if words[0] == "torchrun":
        at = next(i for i, w in enumerate(words) if w.endswith(".py"))
        return words[at:at + 1], words[at + 1:]
    words = words[1:]
    return (words[:2], words[2:]) if words[0] == "-m" else (words[:1], words[1:])


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A copy of the files of a fresh clone (no checkpoint, no data set but the samples)."""
    root = tmp_path_factory.mktemp("clone")
    for path in clone_files():
        (root / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / path.relative_to(ROOT))
    return root


def test_every_written_command_has_its_check():
    written = written_commands()
    assert [c for c in written if c not in EXPECTED] == [], "add how each new command is checked to EXPECTED"
    assert [c for c in EXPECTED if c not in written] == [], "a command of EXPECTED is no longer written anywhere"


def test_every_written_command_runs_as_written_in_a_fresh_clone(clone):
    env = {**os.environ, "PYTHONPATH": "", "CUDA_VISIBLE_DEVICES": ""}
    for command in written_commands():
        expected = EXPECTED[command]
        if expected == EXTERNAL:  # venv: nothing of the project's to check
            words = command.split()
            if words[0].endswith("pip") and "-r" in words:
                assert (clone / words[words.index("-r") + 1]).is_file(), command
            if "pytest" in words:
                assert all((clone / word).exists() for word in words if word.startswith("tests")), command
            if words[0] == "tensorboard":
                assert shutil.which("tensorboard", path=os.path.dirname(sys.executable)), command
            continue
        script, argv = script_and_arguments(command)
        if expected == RUNS or isinstance(expected, tuple):
            tiny = expected[1:] if isinstance(expected, tuple) else ()
            done = subprocess.run([sys.executable, *script, *argv, *tiny], cwd=clone, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (command, done.stderr[-2000:])
            continue
        done = subprocess.run([sys.executable, "-c", UNTIL_TORCH, *script, *argv], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=120)
        if expected == STARTS:
            assert done.returncode == 0 and done.stdout.splitlines()[-1:] in (["REACHED torch"], ["REACHED network"]), \
                (command, done.stderr[-2000:])
        else:
            assert done.returncode == 1 and "REACHED" not in done.stdout, (command, done.stdout, done.stderr[-2000:])
            assert re.fullmatch(f"error: {expected}\n", done.stderr), (command, done.stderr)


# ---------------------------------------------------------------- training logs every window

def test_each_epochs_last_shorter_window_is_logged_and_drawn(train_args, tmp_path):
    """6 images at batch 2: 3 iterations an epoch. With --log_every 2 the log and TensorBoard get iterations 2 and
    3 of each epoch (3: a window of one step, once never logged, like every epoch shorter than --log_every)."""
    train.main(train_args("--epoch_num", "2", "--log_every", "2", "--crop_size", "64"))
    log = (tmp_path / "log/train.txt").read_text().splitlines()
    windows = [re.match(r"epoch (\d) iter (\d)/3 loss \S+ .* \| (\S+) s/it$", line) for line in log]
    assert [(int(m[1]), int(m[2])) for m in windows if m] == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert all(float(m[3]) > 0 for m in windows if m)
    reader = EventAccumulator(str(tmp_path / "log/tensorboard"), size_guidance={"scalars": 0})
    reader.Reload()
    for name in ("loss", *WEIGHTS, "lr", "images_per_s", "face_acc", "brightness"):  # every loss term too
        assert [e.step for e in reader.Scalars(f"train/{name}")] == [2, 3, 5, 6], name
    assert all(e.value > 0 for e in reader.Scalars("train/images_per_s"))
