"""`python -m trainer export --run runs/<name> --out encoder.safetensors`: the backbone alone.

The file holds the backbone's state_dict and, in the safetensors header, what is needed to use it:
backbone, small_stem, width, feature_dim, image_size, mean, std (JSON-encoded strings), and the run.
Standard-width ResNets (width 64) and MobileNetV2 load strictly into a plain torchvision model; the
printed snippet shows how (fc -> Identity; for the small stem, a 3x3 stride-1 conv1 and no max-pool).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from trainer.eval.encoder import Encoder, load_encoder

TORCHVISION_RESNETS = ("resnet18", "resnet50")


def metadata(encoder: Encoder, run_dir: str) -> dict[str, str]:
    cfg = encoder.cfg
    values = {"backbone": cfg.model.backbone, "small_stem": cfg.model.small_stem, "width": cfg.model.width,
              "feature_dim": encoder.feature_dim, "image_size": cfg.data.image_size, "mean": cfg.data.mean,
              "std": cfg.data.std, "method": cfg.method.name, "run": run_dir}
    return {k: json.dumps(v) for k, v in values.items()}


def torchvision_snippet(meta: dict[str, str], path: str) -> str | None:
    """Python that rebuilds the encoder as a torchvision model from `path`; None when it has no
    torchvision equivalent (a ResNet of non-standard width)."""
    backbone, width = json.loads(meta["backbone"]), json.loads(meta["width"])
    small_stem = json.loads(meta["small_stem"])
    lines = ["import torch, torchvision", "from safetensors.torch import load_file",
             f"model = torchvision.models.{backbone}()"]
    if backbone in TORCHVISION_RESNETS and width == 64:
        lines.append("model.fc = torch.nn.Identity()")
        if small_stem:
            lines += ["model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                      "model.maxpool = torch.nn.Identity()"]
    elif backbone == "mobilenet_v2":
        lines.append("model.classifier = torch.nn.Identity()")
        if small_stem:
            lines.append("model.features[0][0].stride = (1, 1)")
    else:
        return None
    lines += [f"model.load_state_dict(load_file({path!r}), strict=True)",
              (f"# inputs: {json.loads(meta['image_size'])} px, normalized with mean {meta['mean']}, "
               f"std {meta['std']}; outputs [B, {meta['feature_dim']}]")]
    return "\n".join(lines)


def save_encoder(encoder: Encoder, out: str, run_dir: str) -> str | None:
    """Write the encoder's backbone to `out`; returns the torchvision snippet (or None)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.backbone.state_dict().items()}
    meta = metadata(encoder, run_dir)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, out, metadata=meta)
    return torchvision_snippet(meta, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer export", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory (runs/<name>)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    args = parser.parse_args(argv)
    try:
        encoder = load_encoder(args.run, torch.device("cpu"))
    except (OSError, ValueError, RuntimeError) as err:  # no run, no readable checkpoint, weights of another shape
        print(f"export error: {args.run}: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2
    try:
        snippet = save_encoder(encoder, args.out, args.run)
    except (OSError, SafetensorError) as err:  # --out unwritable, a directory, the disk full
        print(f"export error: {args.out}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    if snippet is None:
        print("this backbone has no plain torchvision equivalent; load it with "
              "trainer.models.build_backbone and the metadata in the file's header")
    else:
        print("load it into torchvision with:\n\n" + snippet)
    return 0
