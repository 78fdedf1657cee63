"""The peer of the time-to-accuracy benchmark: SimCLR as a plain PyTorch loop over lightly's documented parts.

Built the way lightly's SimCLR example builds it: torchvision `ImageFolder` with lightly's
`SimCLRTransform`, lightly's `SimCLRProjectionHead`, `NTXentLoss`, `LARS` (biases and norm weights in
a group without weight decay, `get_weight_decay_parameters`) and `CosineWarmupScheduler` stepped once
per optimizer step. The backbone is the project's ResNet (the same torchvision modules and parameter
names, rebuilt here without importing the project), so its weights load strictly into
`trainer.models.build_backbone`. It runs in its own environment (`make bench-env`): lightly pulls
hydra-core, which downgrades omegaconf below what the trainer needs.

    .venv-peer/bin/python benchmarks/peer_lightly.py --params params.json --out DIR

`params.json` holds every hyperparameter (time_to_accuracy.py derives them from the trainer's config),
among them `total_steps` (the schedule's length) and `save_every`: after every `save_every` optimizer
steps the backbone's state_dict is written to DIR/step_{step:08d}.pt (temporary name, then renamed, so
a reader never sees half a file).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock


def resnet18(width: int, small_stem: bool) -> nn.Module:
    """ResNet-18 with `width` first-stage channels and optionally the 3x3 small-image stem, fc removed."""
    net = torchvision.models.ResNet(BasicBlock, [2, 2, 2, 2])
    if width != 64:
        net.inplanes = width
        net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        for i in range(4):
            setattr(net, f"layer{i + 1}", net._make_layer(BasicBlock, width * 2**i, 2, stride=1 if i == 0 else 2))
    if small_stem:
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


def save_atomic(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(p: dict, out: Path) -> None:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.transforms import SimCLRTransform
    from lightly.utils.lars import LARS
    from lightly.utils.scheduler import CosineWarmupScheduler

    torch.manual_seed(p["seed"])
    brightness, contrast, saturation, hue = p["jitter"]
    transform = SimCLRTransform(
        input_size=p["image_size"], cj_prob=p["jitter_prob"], cj_strength=1.0, cj_bright=brightness,
        cj_contrast=contrast, cj_sat=saturation, cj_hue=hue, min_scale=p["min_scale"],
        random_gray_scale=p["gray_prob"], gaussian_blur=p["blur_prob"], hf_prob=p["flip_prob"],
        vf_prob=0.0, rr_prob=0.0, normalize={"mean": p["mean"], "std": p["std"]},
    )
    dataset = torchvision.datasets.ImageFolder(p["train_dir"], transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=p["batch_size"], shuffle=True, drop_last=True,
                                         num_workers=p["workers"], persistent_workers=p["workers"] > 0)
    backbone = resnet18(p["width"], p["small_stem"])
    dim = 8 * p["width"]
    head = SimCLRProjectionHead(dim, p["proj_hidden_dim"] or dim, p["proj_output_dim"])
    model = nn.ModuleDict({"backbone": backbone, "head": head})
    criterion = NTXentLoss(temperature=p["temperature"])
    decay, no_decay = get_weight_decay_parameters([backbone, head])
    optimizer = LARS([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=p["lr"],
                     momentum=p["momentum"], weight_decay=p["weight_decay"],
                     trust_coefficient=p["trust_coefficient"])
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=round(p["warmup_epochs"] * len(loader)),
                                      max_epochs=p["total_steps"], end_value=p["final_lr_ratio"])
    model.train()
    step = 0
    while step < p["total_steps"]:
        for (x0, x1), _ in loader:
            loss = criterion(head(backbone(x0)), head(backbone(x1)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % p["save_every"] == 0:
                save_atomic(backbone.state_dict(), out / f"step_{step:08d}.pt")
                print(f"step {step}: loss {loss.item():.4f}", flush=True)
            if step == p["total_steps"]:
                break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, required=True, help="JSON file of hyperparameters")
    parser.add_argument("--out", type=Path, required=True, help="folder for epoch_NNN.pt")
    args = parser.parse_args(argv)
    params = json.loads(args.params.read_text())
    if params["threads"]:
        torch.set_num_threads(params["threads"])
    args.out.mkdir(parents=True, exist_ok=True)
    train(params, args.out)


if __name__ == "__main__":
    main()
