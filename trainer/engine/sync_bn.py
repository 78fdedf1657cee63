"""BatchNorm over the global batch (SyncBN) on every device the engines run on.

SimCLR, BYOL and VICReg are specified with batch statistics over the whole global batch. On CUDA
this is torch's `nn.SyncBatchNorm` (fused kernels); torch's refuses CPU tensors, so on the CPU
(gloo) `GlobalBatchNorm` computes the same thing with torch's own fused CPU BatchNorm kernels and
one small collective each way. Forward: each rank's (count, mean, sum of squared deviations) per
channel, all-gathered and combined with Chan et al.'s parallel variance formula (no sum-of-squares
cancellation), then the native kernel normalizes with those global statistics. Backward: the native
kernel gives the local sums of dy and dy * x_hat, one all-reduce makes them global, and the
statistics' part of dx is a per-channel affine map of x, as in SyncBatchNorm's backward.
The same arithmetic in autograd ops cost 0.77 s of a 2.17 s step, this 0.38 s of 1.78 (width-16
ResNet-18, 2 ranks, one thread each; SyncBN off: 1.40 s; benchmarks/README.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


class _GlobalBatchNormFunction(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean and biased var over every rank's x.
    Returns (y, global mean, global unbiased var); the last two carry no gradient.

    Every pass over x is one of torch's BatchNorm kernels or an addcmul: on the CPU `torch.var_mean`
    over (N, H, W) is 6x slower than the training-mode kernel that also yields the statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        var = (invstd.pow(-2) - eps).clamp_(min=0)
        parts = [torch.empty(1 + 2 * x.shape[1], dtype=x.dtype, device=x.device)
                 for _ in range(dist.get_world_size())]
        dist.all_gather(parts, torch.cat([count, mean, var * count]))
        counts, means, squares = torch.stack(parts).split([1, x.shape[1], x.shape[1]], dim=1)
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        global_var = (squares + counts * (means - global_mean) ** 2).sum(0) / total
        y = torch.batch_norm(x, weight, bias, global_mean, global_var, False, 0.0, eps, False)
        # the backward kernel returns the sum of dy * x_hat as the weight's gradient: it needs a weight
        ctx.save_for_backward(x, x.new_ones(x.shape[1]) if weight is None else weight, global_mean, global_var)
        ctx.eps, ctx.total = eps, total
        unbiased = global_var * (total / (total - 1))
        ctx.mark_non_differentiable(global_mean, unbiased)
        return y, global_mean, unbiased

    @staticmethod
    def backward(ctx, dy, _mean_grad, _var_grad):
        x, weight, mean, var = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dy = dy.contiguous(memory_format=_layout(x))
        # the local sums of dy * x_hat and of dy (the parameters' gradients), no dx
        _, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, mean, var, None, None, False, ctx.eps, [False, True, True])
        dx = None
        if needs[0]:
            sums = torch.cat([dbias, dweight])
            dist.all_reduce(sums)
            sum_dy, sum_dy_xhat = sums.chunk(2)
            invstd = torch.rsqrt(var + ctx.eps)
            # dx = weight * invstd * (dy - (sum_dy + x_hat * sum_dy_xhat) / N), x_hat = (x - mean) * invstd:
            # per channel dy * a + x * b + c
            a = weight * invstd
            b = -a * invstd * sum_dy_xhat / ctx.total
            c = -a * (sum_dy - mean * invstd * sum_dy_xhat) / ctx.total
            shape = (1, -1, *[1] * (x.dim() - 2))
            dx = torch.addcmul(c.view(shape), x, b.view(shape)).addcmul_(dy, a.view(shape))
        return dx, dweight if needs[1] else None, dbias if needs[2] else None, None


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
        xs = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in fp32 (fp64 stays fp64)
        weight, bias = (self.weight, self.bias) if self.affine else (None, None)
        y, mean, var = _GlobalBatchNormFunction.apply(xs, weight, bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(var.to(self.running_var.dtype), momentum)
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
