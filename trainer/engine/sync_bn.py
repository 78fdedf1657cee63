"""BatchNorm over the global batch (SyncBN) on every device the engines run on.

SimCLR, BYOL and VICReg are specified with batch statistics over the whole global batch. On CUDA
this is torch's `nn.SyncBatchNorm` (fused kernels); torch's refuses CPU tensors, so on the CPU
(gloo) `GlobalBatchNorm` does the same arithmetic in autograd: each rank's (count, mean, sum of
squared deviations) per channel, gathered with gradient and combined with Chan et al.'s parallel
variance formula (no sum-of-squares cancellation). Its backward, like SyncBatchNorm's, reduces the
statistics' gradients over the ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainer.dist import all_gather_with_grad


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm{1,2,3}d whose training statistics are those of the batch gathered from every rank.

    Normalizes with the biased global variance and tracks the unbiased one, as BatchNorm does on
    one process; statistics in float32 whatever the input dtype. Outside training, or in one
    process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))
        xs = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in fp32 (fp64 stays fp64)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=xs.dtype, device=x.device)
        mean = xs.mean(dims)
        squares = (xs - mean.view(shape)).pow(2).sum(dims)
        counts, means, sq = all_gather_with_grad(torch.cat([count, mean, squares])[None]).split(
            [1, self.num_features, self.num_features], dim=1)
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        global_sq = (sq + counts * (means - global_mean) ** 2).sum(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(global_mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((global_sq / (total - 1)).to(self.running_var.dtype), momentum)
        y = (xs - global_mean.view(shape)) * torch.rsqrt(global_sq / total + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm computing global-batch statistics (weights, buffers, dtype,
    requires_grad and train/eval mode kept); call before moving it to `device`."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        dtype = next((t.dtype for t in module.state_dict().values() if t.is_floating_point()), None)
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats, dtype=dtype)
        converted.load_state_dict(module.state_dict())
        for new, old in zip(converted.parameters(), module.parameters()):
            new.requires_grad_(old.requires_grad)  # a frozen EMA target stays frozen
        return converted.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
