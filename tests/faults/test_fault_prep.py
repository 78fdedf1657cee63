"""`python -m data_prep` never deletes what it did not write, and a failed run leaves the good dataset whole.

Real files throughout: a user's own files next to the shards, `--out` overlapping `--src`, a `--name`
that leaves `--out`, a bad option (`--size 0`), a corrupt source image and `kill -9` while a good
dataset is already in place. "Whole" means every file of the folder byte-identical, and `verify`
passing on it. `kill -9` and the exit status of `--size 0` use real processes; the other cases call
the same `main()` in-process, because every process start imports torch (through webdataset),
seconds each on 2 loaded cores.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_harness import REPO
from PIL import Image

from data_prep.__main__ import main
from data_prep.verify import verify_dataset

pytestmark = pytest.mark.slow


def data_prep(*argv: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep", *map(str, argv)], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def png(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """data/pets/{train,val}/{cat,dog}/*.png (3 images each) and the user's own pets/archive.tar."""
    root = tmp_path / "data" / "pets"
    for split in ("train", "val"):
        for k, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                (root / split / cls / f"{i}.png").write_bytes(png(100 * k + i))
    (root / "archive.tar").write_bytes(b"the user's own archive")
    return root


DIGITS = ("digits", "--splits", "test", "--size", 8, "--workers", 1)


@pytest.fixture(scope="module")
def good_once(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good")
    assert run(*DIGITS, "--out", out, "--max-samples", 100) == 0
    assert verify_dataset(out / "digits", workers=1).ok
    return out / "digits"


@pytest.fixture
def good(good_once: Path, tmp_path: Path) -> Path:
    """A verified digits dataset (360 test images in 4 shards) with the user's own files beside the shards."""
    folder = shutil.copytree(good_once, tmp_path / "shards" / "digits")
    (folder / "my_backup.tar").write_bytes(b"a backup")
    (folder / "notes.idx").write_bytes(b"notes")
    return folder


def test_rerun_removes_only_what_the_previous_manifest_listed(good: Path):
    assert run(*DIGITS, "--out", good.parent, "--max-samples", 200) == 0
    names = sorted(p.name for p in good.iterdir())
    assert names == ["manifest.json", "my_backup.tar", "notes.idx", "test-000000.idx", "test-000000.tar",
                     "test-000001.idx", "test-000001.tar"]  # test-000002/3 (old, listed) removed; the user's kept
    assert (good / "my_backup.tar").read_bytes() == b"a backup"


@pytest.mark.parametrize("case", ["out is the parent of src", "out/name holds src", "out is inside src"])
def test_out_overlapping_src_is_refused(tree: Path, tmp_path: Path, capsys, case: str):
    out, name = {"out is the parent of src": (tree.parent, []),  # the dataset folder would be src itself
                 "out/name holds src": (tmp_path, ["--name", "data"]),
                 "out is inside src": (tree, [])}[case]
    before = folder_bytes(tmp_path)
    assert run("imagefolder", "--src", tree, "--out", out, *name, "--workers", 1) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "choose an --out outside it" in err
    assert folder_bytes(tmp_path) == before


@pytest.mark.parametrize("name", ["../victim", "a/b", "..", "."])
def test_name_that_is_not_a_plain_folder_name_is_refused(tree: Path, tmp_path: Path, capsys, name: str):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.tar").write_bytes(b"precious")
    assert run("imagefolder", "--src", tree, "--out", tmp_path / "out", "--name", name, "--workers", 1) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"--name {name!r}: must be a plain folder name" in err
    assert folder_bytes(victim) == {"precious.tar": b"precious"} and not (tmp_path / "out").exists()


def test_size_0_is_one_line_exit_2_and_the_dataset_stays(good: Path):
    before = folder_bytes(good)
    result = data_prep("digits", "--out", good.parent, "--size", 0)
    assert result.returncode == 2 and result.stderr.strip() == "error: --size 0: must be a positive integer"
    assert folder_bytes(good) == before


def test_failed_run_leaves_the_previous_dataset_whole(tree: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert run("imagefolder", "--src", tree, "--out", out, "--max-samples", 2, "--workers", 1) == 0
    before = folder_bytes(out / "pets")
    (tree / "val" / "dog" / "2.png").write_bytes(png(7)[:60])  # truncated: found while encoding the last split
    assert run("imagefolder", "--src", tree, "--out", out, "--max-samples", 3, "--workers", 1) == 1
    assert "2.png: not a readable image" in capsys.readouterr().err
    assert folder_bytes(out / "pets") == before
    assert verify_dataset(out / "pets", workers=1).ok


def test_kill_9_mid_run_leaves_the_previous_dataset_whole(good: Path):
    before = folder_bytes(good)
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", "digits", "--out", str(good.parent), "--splits",
                             "test", "--size", "256", "--max-samples", "20", "--workers", "1"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staged = good / "test-000001.idx.partial"  # two shards of the new run are complete
    deadline = time.monotonic() + 60
    while not staged.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    after = {name: data for name, data in folder_bytes(good).items() if not name.endswith(".partial")}
    assert after == before
    assert verify_dataset(good, workers=1).ok
    assert run(*DIGITS, "--out", good.parent, "--max-samples", 100) == 0
    assert not list(good.glob("*.partial"))  # the next run clears what the killed one staged
