"""STYLE.md principle 8: each component takes its own config section. Only config.py (which defines and
serializes it), the wiring (the loop, the CLIs) and the eval report (which renders the whole run) take the
whole `Config`; an engine, the plan, the loader, the checkpointer or a method handed it could read any
section it liked."""

from __future__ import annotations

import ast
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
WIRING = {"config.py", "loop.py", "__main__.py", "eval/cli.py", "eval/report.py"}


def whole_config_parameters(source: str) -> list[str]:
    """'function(parameter)' for every parameter annotated with `Config` (alone or in a union)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                names = {n.id for n in ast.walk(arg.annotation) if isinstance(n, ast.Name)} if arg.annotation else set()
                if "Config" in names:
                    found.append(f"{node.name}({arg.arg})")
    return found


def test_the_detector_finds_a_whole_config_parameter():
    assert whole_config_parameters("def f(a: int, cfg: Config | None = None, *, b: Config): ...") == ["f(cfg)", "f(b)"]
    assert whole_config_parameters("def f(train: TrainConfig, data: DataConfig): ...") == []


def test_only_the_wiring_takes_the_whole_config():
    offenders = {}
    for path in sorted(TRAINER.rglob("*.py")):
        name = path.relative_to(TRAINER).as_posix()
        if name not in WIRING and (found := whole_config_parameters(path.read_text())):
            offenders[name] = found
    assert offenders == {}, f"pass these their config sections instead: {offenders}"
