"""The config layer (trainer/config.py): defaults <- YAML layers (`_base_`) <- CLI overrides, checked."""

from __future__ import annotations

import re

import pytest

from trainer.config import ConfigError, to_yaml
from trainer.registry import load_config


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_and_method_section_typed_by_method():
    cfg = load_config(None, ["method.name=byol"])
    assert cfg.method.name == "byol" and cfg.method.tau_base == 0.996
    assert cfg.optim.trust_coefficient == 0.001 and cfg.train.global_batch_size == 256


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    f = write(tmp_path / "a.yaml", "train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.epochz'.*global_batch_size"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"command line: unknown key 'optim.lrr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'method.tau_base'"):  # a BYOL knob on SimCLR
        load_config(None, ["method.name=simclr", "method.tau_base=0.9"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"bad value for 'train.epochs'"):
        load_config(write(tmp_path / "a.yaml", "train:\n  epochs: many\n"))
    with pytest.raises(ConfigError, match=r"bad value for 'optim.base_lr'"):
        load_config(None, ["optim.base_lr=fast"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match=r"'engine.name' = 'horovod': choose one of ddp, deepspeed"):
        load_config(None, ["engine.name=horovod"])
    with pytest.raises(ConfigError, match=r"'method.name' = 'moco'"):
        load_config(None, ["method.name=moco"])
    with pytest.raises(ConfigError, match=r"'train.epochs' must be >= 1"):
        load_config(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_base_composition_and_override_precedence(tmp_path):
    write(tmp_path / "method.yaml", "method:\n  name: byol\noptim:\n  base_lr: 0.2\n  weight_decay: 1.5e-6\n")
    write(tmp_path / "scale.yaml", "train:\n  global_batch_size: 4096\noptim:\n  base_lr: 0.5\n")
    (tmp_path / "sub").mkdir()
    top = write(tmp_path / "sub" / "run.yaml",
                "_base_: [../method.yaml, ../scale.yaml]\ntrain:\n  epochs: 7\n  global_batch_size: 512\n")
    cfg = load_config(top)
    assert cfg.method.name == "byol"
    assert cfg.optim.base_lr == 0.5  # a later base overrides an earlier one
    assert cfg.optim.weight_decay == 1.5e-6
    assert (cfg.train.epochs, cfg.train.global_batch_size) == (7, 512)  # the file overrides its bases
    cfg = load_config(top, ["train.global_batch_size=64", "method.tau_base=0.99"])  # CLI overrides all
    assert cfg.train.global_batch_size == 64 and cfg.method.tau_base == 0.99
    # the resolved config round-trips through config.yaml
    saved = write(tmp_path / "config.yaml", to_yaml(cfg))
    assert load_config(saved) == cfg


def test_base_cycle_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("override", "named"), [
    ("data.image_size=0", "'data.image_size' = 0"),
    ("data.image_size=-32", "'data.image_size' = -32"),
    ("data.workers=-1", "'data.workers' = -1"),
    ("engine.dist_timeout_s=0", "'engine.dist_timeout_s' = 0"),
    ("optim.base_lr=-0.1", "'optim.base_lr' = -0.1"),
    ("train.max_steps=-5", "'train.max_steps' = -5"),
])
def test_out_of_range_values_name_key_and_value(override, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, [override])


def test_boundary_values_are_accepted():
    cfg = load_config(None, ["data.image_size=1", "data.workers=0", "engine.dist_timeout_s=1", "optim.base_lr=0",
                             "train.max_steps=0"])
    assert (cfg.data.image_size, cfg.data.workers, cfg.optim.base_lr, cfg.train.max_steps) == (1, 0, 0.0, 0)


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../victim", "a/b", "..", ".", "\"\""])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match=r"'train.name' = .*plain folder name"):
        load_config(None, [f"train.name={name}"])


def test_environment_interpolation_is_refused_in_files_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSCALE_TEST_SECRET", "hunter2")
    with pytest.raises(ConfigError, match=r"command line: 'train.name' = .*environment interpolation"):
        load_config(None, ["train.name=${oc.env:SSLSCALE_TEST_SECRET}"])
    write(tmp_path / "base.yaml", "data:\n  mean: [0.5, '${oc.env:SSLSCALE_TEST_SECRET}', 0.5]\n")
    top = write(tmp_path / "top.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"top.yaml: 'data.mean.1' = .*environment interpolation"):
        load_config(top)
    # a plain reference between keys still resolves: only the environment is off limits
    cfg = load_config(write(tmp_path / "ref.yaml", "train:\n  name: ${method.name}_run\n"))
    assert cfg.train.name == "simclr_run"
