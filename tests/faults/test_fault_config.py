"""Config values a careless or hostile user may pass: each is refused with one line naming the key and the
value, exit 2, before any run folder exists; nothing from the environment reaches what a run writes; and
TensorBoard is not served to the network unless asked."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_harness import CONFIG, REPO, free_port

from trainer.__main__ import main

BAD_VALUES = [
    ("data.image_size=0", "'data.image_size' = 0"),
    ("data.image_size=1000", "'data.image_size' = 1000: more than 8x the 32x32 px images"),
    ("data.workers=-1", "'data.workers' = -1"),
    ("engine.dist_timeout_s=0", "'engine.dist_timeout_s' = 0"),
    ("optim.base_lr=-1.0", "'optim.base_lr' = -1.0"),
    ("train.max_steps=-3", "'train.max_steps' = -3"),
    ("train.name=/tmp/outside", "'train.name' = '/tmp/outside'"),
    ("train.name=../victim", "'train.name' = '../victim'"),
    ("train.name=${oc.env:HF_TOKEN}", "environment interpolation is not allowed"),
    # CI has no GPU: on the CPU a ResNet under 8 channels would abort in torch's conv backward (__main__.py)
    ("model.width=4", "'model.width' = 4: must be >= 8 on the CPU"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_is_one_line_exit_2_and_creates_no_folder(digits_shards, tmp_path, capsys, monkeypatch, override,
                                                            message):
    """The real entry point (`python -m trainer train` is `trainer.__main__.main`), in this process."""
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEconfigTOKEN0123456789abcdef")
    code = main(["train", "--config", str(CONFIG), f"data.shards={digits_shards}", f"train.run_root={tmp_path / 'runs'}",
                 override])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert "hf_FAKE" not in err
    assert not (tmp_path / "runs").exists() and not Path("/tmp/outside").exists()


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket in LISTEN state on `port` (/proc/net/tcp: hex address:port, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))  # little-endian
    return found


def serve_tensorboard(runs: Path, env: dict[str, str]) -> set[str]:
    """Start launch/tensorboard.sh, wait until it listens, return where; then stop it."""
    port = free_port()
    proc = subprocess.Popen([str(REPO / "launch" / "tensorboard.sh"), str(runs)],
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PORT": str(port), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (found := listening_addresses(port)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        return found
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_tensorboard_binds_loopback_unless_asked(tmp_path):
    (tmp_path / "runs").mkdir()
    assert serve_tensorboard(tmp_path / "runs", {}) == {"127.0.0.1"}
    assert serve_tensorboard(tmp_path / "runs", {"HOST": "0.0.0.0"}) == {"0.0.0.0"}  # the control: the flag is read
