"""One MLP builder for every projector, predictor and expander head."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

from torch import nn

RELU = functools.partial(nn.ReLU, inplace=True)


def mlp(
    dims: Sequence[int], *, bn: bool = True, last_bn: bool = False, last_bias: bool = True,
    activation: Callable[[], nn.Module] = RELU,
) -> nn.Sequential:
    """dims [d0, d1, ..., dk] -> Linear(d0, d1)-BN-ReLU- ... -Linear(d_{k-1}, dk) [-BN].

    Hidden layers are Linear, BatchNorm1d (if `bn`), `activation()` (ReLU; DINO's head: GELU, no BN);
    the last layer is a plain Linear
    (optionally without bias, as VICReg's expander; optionally followed by BatchNorm1d).
    SimCLR projector: [D, D, 128]; BYOL projector and predictor: [D, 4096, 256], [256, 4096, 256];
    VICReg expander: [D, 8192, 8192, 8192].
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output dims, got {list(dims)}")
    layers: list[nn.Module] = []
    for d_in, d_out in itertools.pairwise(dims[:-1]):
        layers.append(nn.Linear(d_in, d_out))
        if bn:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(activation())
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1]))
    return nn.Sequential(*layers)
