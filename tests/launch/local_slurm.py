"""A throwaway Slurm cluster on localhost: munged, slurmctld and slurmd with config and state in a temp dir.

One node named `localhost` (slurmd -N; the machine's hostname may differ) with this machine's CPUs,
authenticated by a private munged on its own socket. Every daemon runs in the foreground as our
child and is stopped by its PID in `stop()`, also when a test fails.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmStartError(RuntimeError):
    """A daemon did not come up; the message names it and quotes its log."""


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def _write_config(self) -> None:
        user = getpass.getuser()
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir(mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(
            f"""ClusterName=sslscale-test
SlurmctldHost=localhost
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.root}/munge/munge.socket
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.root}/slurmctld.log
SlurmdLogFile={self.root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.stdout").open("wb")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(
            [_binary(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _log(self, name: str) -> str:
        text = ""
        for f in (self.root / f"{name}.stdout", self.root / f"{name}.log"):
            if f.exists():
                text += f.read_text(errors="replace")[-3000:]
        return text

    def _wait(self, what: str, ready, daemon: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[daemon].poll() is not None:
                raise SlurmStartError(f"{daemon} exited with {self.procs[daemon].returncode}:\n{self._log(daemon)}")
            if ready():
                return
            time.sleep(0.2)
        raise SlurmStartError(f"{what} not ready after {timeout:.0f} s:\n{self._log(daemon)}")

    def start(self) -> LocalSlurm:
        self._write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            ["--foreground", "--force", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
             f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
        )
        self._wait("munge socket", lambda: (m / "munge.socket").exists(), "munged")
        self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld")
        self._spawn("slurmd", ["-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait("node localhost", lambda: self.node_state().startswith("IDLE"), "slurmd")
        return self

    def stop(self) -> None:
        """Cancel what a failed test left running, then SIGTERM each daemon (node daemon first) and
        SIGKILL what is left after 10 s."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--partition=test", "--signal=KILL", "--full", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "--noheader", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=check, timeout=30)

    def node_state(self) -> str:
        out = self.run("scontrol", "show", "node", "localhost", check=False).stdout
        m = re.search(r"State=(\S+)", out)
        return m.group(1) if m else ""

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str]) -> int:
        out = subprocess.run(
            ["sbatch", "--parsable", *args],
            check=False, capture_output=True, text=True, cwd=cwd, env={**self.env, **env}, timeout=30,
        )
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {out.stderr}")
        return int(out.stdout.strip().split(";")[0])

    def wait_job(self, job_id: int, until, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if until(info):
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id}: {what} not reached after {timeout:.0f} s; last: {info}\n"
                           f"slurmctld log:\n{self._log('slurmctld')}\nslurmd log:\n{self._log('slurmd')}")
