"""Untrusted files and leaks: every checkpoint load is `weights_only=True`, a checkpoint carrying pickled code
is refused without running it (by resume, eval and export alike), the image runs as a non-root user,
and no credential appears in configs or in what a run writes."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_harness import FAKE_SECRETS, REPO, clean_env

from trainer.checkpoint import load_model_weights, read_latest

PRODUCT = ("trainer", "data_prep", "benchmarks", "launch")


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def torch_loads(tree: ast.AST):
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "load" \
                and isinstance(func.value, ast.Name) and func.value.id == "torch":
            yield node


def test_every_torch_load_in_the_product_is_weights_only():
    calls = []
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            for call in torch_loads(ast.parse(path.read_text(), str(path))):
                flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
                calls.append((f"{path.relative_to(REPO)}:{call.lineno}", isinstance(flag, ast.Constant) and flag.value))
    assert calls, "no torch.load found: the scan is looking in the wrong place"
    assert [where for where, safe in calls if safe is not True] == []


def plant_payload(reference, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the reference run whose newest checkpoint file carries Payload; (run, file, marker)."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir, ignore=shutil.ignore_patterns("tb"))
    hostile = max((run_dir / "checkpoints").glob("step_*")) / "state.pt"
    marker = tmp_path / "payload_ran"
    torch.save({"model": Payload(marker), "step": 999}, hostile)
    return run_dir, hostile, marker


def test_the_payload_is_live_when_loaded_unsafely(reference, tmp_path):
    """Control: the planted file does run its command under weights_only=False, so the refusals below
    are refusals, not a harmless file."""
    _, hostile, marker = plant_payload(reference, tmp_path)
    code = f"import torch; torch.load({str(hostile)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=clean_env(), capture_output=True,
                   timeout=120)
    assert marker.exists()


def test_checkpoint_with_pickled_code_is_refused_by_resume_and_eval(reference, tmp_path):
    run_dir, hostile, marker = plant_payload(reference, tmp_path)
    with pytest.warns(UserWarning, match=re.escape(str(hostile))):
        directory, state = read_latest(run_dir)
    assert directory != hostile.parent and state["step"] < 999
    with pytest.warns(UserWarning, match=re.escape(str(hostile))):
        _, weights = load_model_weights(run_dir)
    assert torch.equal(weights["backbone.conv1.weight"], state["model"]["backbone.conv1.weight"])
    assert not marker.exists()


@pytest.mark.slow
def test_export_skips_the_hostile_checkpoint_and_writes_safetensors(reference, tmp_path):
    from safetensors.torch import load_file

    run_dir, hostile, marker = plant_payload(reference, tmp_path)
    out_file = tmp_path / "encoder.safetensors"
    out = subprocess.run([sys.executable, "-m", "trainer", "export", "--run", str(run_dir), "--out", str(out_file)],
                         check=False, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not marker.exists()
    assert str(hostile) in out.stderr
    previous = sorted((run_dir / "checkpoints").glob("step_*"))[-2] / "state.pt"
    expected = torch.load(previous, weights_only=True)["model"]
    exported = load_file(out_file)  # safetensors: tensors and a JSON header, nothing executable
    assert exported and all(torch.equal(v, expected[f"backbone.{k}"]) for k, v in exported.items())


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.MULTILINE)]


def test_dockerfile_runs_as_a_non_root_user():
    steps = dockerfile_instructions((REPO / "Dockerfile").read_text())
    last_stage = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    users = [arg for op, arg in steps[last_stage:] if op == "USER"]
    assert users, "the final stage never switches away from root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(arg for op, arg in steps[last_stage:] if op == "RUN")
    assert re.search(rf"useradd\b.*(--uid\s+{user}\b|\s{user}\b)", created), (
        f"USER {user} is not created by a useradd in the final stage")


CREDENTIAL = re.compile(
    r"(?i)\b(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|auth)\b\s*[:=]\s*['\"]?[^\s'\"]{6,}"
    r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def test_no_credentials_in_configs_or_a_runs_logs(reference):
    """The reference run had HF_TOKEN, WANDB_API_KEY and AWS_SECRET_ACCESS_KEY in its environment."""
    files = sorted((REPO / "configs").rglob("*.yaml"))
    files += sorted(p for p in reference.run_dir.rglob("*") if p.is_file() and "checkpoints" not in p.parts)
    files += sorted(reference.job.logs.glob(f"{reference.job.tag}.*"))
    assert any(p.name == "metrics.jsonl" for p in files) and any(p.suffix == ".err" for p in files)
    found = []
    for path in files:
        text = path.read_bytes().decode("latin-1")
        found += [f"{path}: {m.group(0)[:40]}" for m in CREDENTIAL.finditer(text)]
        found += [f"{path}: ${name}" for name, value in FAKE_SECRETS.items() if value in text]
    assert found == []
