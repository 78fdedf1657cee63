"""The newer methods' paper defaults, schedules and parameter-group hyperparameters, through the
optimizer and engine that serve them."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import VIT, random_batch, tiny_method
from torch import nn

from trainer.config import Config, EngineConfig, ModelConfig, OptimConfig, TrainConfig
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan
from trainer.methods.barlow_twins import BarlowTwinsConfig
from trainer.methods.dino import DINOConfig
from trainer.methods.mocov3 import MoCoV3Config
from trainer.methods.simsiam import SimSiamConfig
from trainer.optim import build_optimizer
from trainer.registry import load_config


def test_paper_defaults():
    bt = BarlowTwinsConfig()
    assert (bt.proj_hidden_dim, bt.proj_output_dim, bt.lambd, bt.bias_lr_scale) == (8192, 8192, 5e-3, 0.024)
    ss = SimSiamConfig()
    assert (ss.proj_hidden_dim, ss.proj_output_dim, ss.pred_hidden_dim) == (2048, 2048, 512)
    mc = MoCoV3Config()
    assert (mc.proj_hidden_dim, mc.proj_output_dim, mc.pred_hidden_dim, mc.tau_base) == (4096, 256, 4096, 0.99)
    dn = DINOConfig()
    assert (dn.hidden_dim, dn.bottleneck_dim, dn.out_dim) == (2048, 256, 65536)
    assert (dn.student_temp, dn.warmup_teacher_temp, dn.teacher_temp, dn.center_momentum, dn.tau_base) == (
        0.1, 0.04, 0.07, 0.9, 0.996)
    cfg = load_config("configs/methods/dino.yaml")
    assert (cfg.optim.name, cfg.optim.weight_decay, cfg.method.weight_decay_end, cfg.aug.local_crops) == (
        "adamw", 0.04, 0.4, 8)


@pytest.mark.parametrize("backbone,want", [("resnet18", 1.0), (VIT, 0.2)])
def test_mocov3_temperature_follows_the_backbone(backbone, want):
    method, _ = tiny_method("mocov3", backbone=backbone, image_size=32 if backbone == VIT else 16)
    assert method.temperature == want


def test_barlow_twins_biases_train_at_their_own_lr():
    method, _ = tiny_method("barlow_twins")
    opt = build_optimizer(OptimConfig(name="lars", weight_decay=1.5e-6), method.parameter_groups(), lr=0.2)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["projector"]["lr"] == pytest.approx(0.2)
    assert by_name["projector.no_decay"]["lr"] == pytest.approx(0.0048)
    assert by_name["backbone.no_decay"]["lars_exclude"] and by_name["backbone.no_decay"]["weight_decay"] == 0


def test_dino_schedules_by_step():
    method, _ = tiny_method("dino")
    total = 200
    for step in (0, 9, 19, 20, 100):
        logged = method.before_step(step, total)
        # teacher temperature: linear 0.04 -> 0.07 over the first 10% (20 steps), then 0.07
        want = 0.04 + 0.03 * (step + 1) / 20 if step < 20 else 0.07
        assert logged["teacher_temp"] == pytest.approx(want) and method.teacher_temp == pytest.approx(want)
        assert method.last_layer_frozen == (step < 2)  # 1% of 200 steps
    tau = method.after_step(50, total)["tau"]
    assert tau == pytest.approx(1 - 0.004 * (math.cos(math.pi * 50 / total) + 1) / 2)


def test_dino_use_bn_puts_batchnorm_in_the_hidden_layers_of_both_heads():
    """The authors' DINOHead(use_bn=True): Linear-BN-GELU twice, then the bottleneck Linear; the teacher's
    running statistics are the student's after each EMA step (copied, as every EMA buffer)."""
    method, views = tiny_method("dino", overrides=("method.use_bn=true",))
    layout = [type(m) for m in method.head.mlp]
    assert layout == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear]
    assert [type(m) for m in method.teacher_head.module.mlp] == layout
    plain, _ = tiny_method("dino")
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.head.mlp)
    method(random_batch(views, 8))  # train mode: the student's running statistics move
    student_bn, teacher_bn = method.head.mlp[1], method.teacher_head.module.mlp[1]
    assert not torch.equal(student_bn.running_mean, teacher_bn.running_mean)
    method.after_step(1, 10)
    assert torch.equal(student_bn.running_mean, teacher_bn.running_mean)


def test_dino_freezes_its_last_layer_in_the_engine_and_schedules_weight_decay():
    torch.manual_seed(0)
    method, views = tiny_method("dino", local_crops=0)
    cfg = Config(optim=OptimConfig(name="adamw", base_lr=1e-2, weight_decay=0.04, warmup_epochs=0),
                 engine=EngineConfig(name="ddp"), model=ModelConfig(width=8, small_stem=True),
                 train=TrainConfig(global_batch_size=8, max_steps=100))
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, torch.device("cpu"), num_samples=800)
    engine = build_engine(cfg.engine, cfg.optim, plan, method, DistContext(), nonfinite=cfg.train.nonfinite)
    by_name = {g["name"]: g for g in engine.optimizer.param_groups}
    last, mlp_weight = method.head.last_layer.weight, method.head.mlp[0].weight
    for step in range(3):
        method.before_step(step, plan.total_steps)
        before = last.detach().clone(), mlp_weight.detach().clone()
        engine.step([random_batch(views, 8, seed=step)], plan.lr, step)
        # frozen for round(0.01 x 100) = 1 step: untouched (not even AdamW's decoupled decay), then trained
        assert torch.equal(last, before[0]) == (step < 1)
        assert not torch.equal(mlp_weight, before[1])
        wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * step / plan.total_steps))
        assert by_name["head"]["weight_decay"] == pytest.approx(wd)
        assert by_name["head.no_decay"]["weight_decay"] == 0.0


def test_deepspeed_zero_1_refuses_dino_naming_the_combination():
    """ZeRO 1-2 move gradients into partitions during backward: a freeze that drops .grad would be lost."""
    method, _ = tiny_method("dino")
    cfg = Config(optim=OptimConfig(name="sgd"), engine=EngineConfig(name="deepspeed", zero_stage=1),
                 train=TrainConfig(global_batch_size=8))
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, 1, torch.device("cpu"), num_samples=80)
    with pytest.raises(ValueError, match=r"engine.zero_stage = 1 cannot train DINO.*before_optimizer_step"):
        build_engine(cfg.engine, cfg.optim, plan, method, DistContext(), nonfinite=cfg.train.nonfinite)
