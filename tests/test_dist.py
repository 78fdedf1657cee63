"""trainer.dist reads each launcher's environment the same way."""

import os

import pytest
import torch

from trainer import dist


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
                "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_no_launcher_is_one_process(clean_env):
    ctx = dist.init_distributed()
    assert (ctx.global_rank, ctx.local_rank, ctx.world_size, ctx.distributed) == (0, 0, 1, False)
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x


def test_slurm_env_becomes_torchrun_env(clean_env):
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu[017-018]")
    clean_env.setenv("SLURM_JOB_ID", "123456")
    clean_env.setenv("PATH", "/nonexistent")  # no scontrol: the node-list parser must answer
    dist._env_from_slurm()
    assert os.environ["RANK"] == "5" and os.environ["WORLD_SIZE"] == "8"
    assert os.environ["LOCAL_RANK"] == "1" and os.environ["LOCAL_WORLD_SIZE"] == "4"
    assert os.environ["MASTER_ADDR"] == "gpu017"
    assert os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)


def test_torchrun_env_wins_over_slurm(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "4")
    dist._env_from_slurm()
    assert os.environ["RANK"] == "0" and "WORLD_SIZE" not in os.environ


@pytest.mark.parametrize("nodelist,head", [("node7", "node7"), ("a[3-5,9],b1", "a3"), ("x-[01-02]", "x-01")])
def test_first_slurm_host(clean_env, nodelist, head):
    clean_env.setenv("PATH", "/nonexistent")
    assert dist._first_slurm_host(nodelist) == head
