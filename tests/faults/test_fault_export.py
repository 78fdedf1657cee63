"""`python -m trainer export` on a bad run or a bad --out: one line naming the path, exit 2, no traceback."""

from __future__ import annotations

import shutil

import pytest

from trainer.eval.export import main


def export(capsys, run, out) -> tuple[int, str]:
    code = main(["--run", str(run), "--out", str(out)])
    return code, capsys.readouterr().err


def test_missing_run_folder(tmp_path, capsys):
    code, err = export(capsys, tmp_path / "nope", tmp_path / "e.safetensors")
    assert code == 2 and err.count("\n") == 1 and str(tmp_path / "nope") in err and "no checkpoint" in err
    assert not (tmp_path / "e.safetensors").exists()


@pytest.mark.slow
def test_run_whose_checkpoints_are_all_unreadable(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir, ignore=shutil.ignore_patterns("tb"))
    for state in (run_dir / "checkpoints").glob("step_*/state.pt"):
        state.write_bytes(b"damaged")
    with pytest.warns(UserWarning):
        code, err = export(capsys, run_dir, tmp_path / "e.safetensors")
    assert code == 2 and err.count("\n") == 1 and "no checkpoint is readable" in err, err


@pytest.mark.slow
@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_unwritable_out(reference, tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    out = tmp_path if where == "a directory" else tmp_path / "file" / "e.safetensors"
    code, err = export(capsys, reference.run_dir, out)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"export error: {out}: "), err
