"""Weighted k-nearest-neighbour classifier on frozen features.

The vote of InstDisc (Wu et al. 2018, sec. 3.4) as used by DINO's `eval_knn.py`: a test feature's
k most cosine-similar train features each add exp(sim / T) to the score of their class. Test rows
are processed in chunks, so memory is O(chunk_size x N_train), never [N_test, N_train].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
               num_classes: int, k: int = 200, temperature: float = 0.07,
               chunk_size: int = 256) -> torch.Tensor:
    """Class scores [N_test, num_classes] from train [N, D] / labels [N] and test [M, D] features.

    Computed on the device of `train_features`; k is clipped to N (a bank smaller than k votes whole).
    """
    device = train_features.device
    bank = F.normalize(train_features.float(), dim=1)
    bank_labels = train_labels.to(device)
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(test_features[start:start + chunk_size].to(device).float(), dim=1)
        top_sim, top_idx = (query @ bank.T).topk(k, dim=1)
        weights = (top_sim / temperature).exp()  # at most exp(1 / T): ~1.6e6 for T = 0.07, fine in fp32
        chunk = torch.zeros(query.shape[0], num_classes, device=device)
        scores.append(chunk.scatter_add_(1, bank_labels[top_idx], weights))
    return torch.cat(scores).cpu()


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.07,
                chunk_size: int = 256) -> torch.Tensor:
    """Predicted class [N_test] (int64): the argmax of `knn_scores`."""
    return knn_scores(train_features, train_labels, test_features, num_classes, k, temperature,
                      chunk_size).argmax(dim=1)
