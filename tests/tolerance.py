"""Float tolerances derived from the arithmetic, never from one machine's output (STYLE.md, principle 16).

A dot product or sequential sum of `n` terms rounded in a dtype with machine epsilon eps (unit
roundoff u = eps / 2) is within (n - 1) u sum|terms| < eps x scale x n of the exact value, where
`scale` bounds sum|terms| (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5);
a logarithm turns a relative error into an absolute one of the same size. The bound holds for any
summation order, so it covers every BLAS (Intel MKL, AMD's, OpenBLAS) and vector width. Each test
states what its `scale` and `length` count: the terms a result accumulates through its chain of
reductions (d for a length-d dot product, n for a sum over n rows, a few per elementwise step).
"""

from __future__ import annotations

import torch


def rounding_bound(dtype: torch.dtype, scale: float, length: int) -> float:
    """eps(dtype) x scale x length: a bound on the rounding error of a result of `length` accumulated
    terms whose magnitudes sum to at most `scale`."""
    return torch.finfo(dtype).eps * scale * length
