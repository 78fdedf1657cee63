"""Weighted kNN against a brute-force float64 implementation written out here."""

import math

import numpy as np
import torch
from tolerance import rounding_bound

from trainer.eval.knn import knn_predict, knn_scores


def score_rtol(d, k, temperature):
    """float32 relative bound on a class score: each cosine accumulates two length-d normalizations and
    a length-d dot product, which exp(sim / T) turns into a relative error x 1/T; k votes are summed."""
    return rounding_bound(torch.float32, 1 / temperature, 2 * d + 4 + k)


def brute_force_scores(train, train_y, test, num_classes, k, temperature):
    train = train.double().numpy()
    test = test.double().numpy()
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    scores = np.zeros((len(test), num_classes))
    for i, q in enumerate(test):
        sims = [float(np.dot(q, t)) for t in train]
        for j in sorted(range(len(train)), key=lambda j: -sims[j])[:k]:
            scores[i, int(train_y[j])] += math.exp(sims[j] / temperature)
    return scores


def test_scores_match_float64_brute_force_in_chunks():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(120, 16, generator=g), torch.randn(37, 16, generator=g)
    train_y = torch.randint(0, 5, (120,), generator=g)
    want = brute_force_scores(train, train_y, test, 5, k=20, temperature=0.07)
    got = knn_scores(train, train_y, test, 5, k=20, temperature=0.07, chunk_size=8)  # 37 = 4 x 8 + 5
    np.testing.assert_allclose(got.double().numpy(), want, rtol=score_rtol(16, 20, 0.07))
    assert torch.equal(knn_predict(train, train_y, test, 5, 20, 0.07, chunk_size=1000),
                       torch.from_numpy(want.argmax(1)))


def test_k_larger_than_bank_votes_with_every_sample_and_scale_does_not_matter():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(30, 8, generator=g), torch.randn(9, 8, generator=g)
    train_y = torch.randint(0, 3, (30,), generator=g)
    want = brute_force_scores(train, train_y, test, 3, k=30, temperature=0.5)
    got = knn_scores(train * 7.0, train_y, test * 0.1, 3, k=200, temperature=0.5)  # cosine: scale-free
    np.testing.assert_allclose(got.double().numpy(), want, rtol=score_rtol(8, 30, 0.5))


def test_recovers_clustered_classes():
    g = torch.Generator().manual_seed(2)
    centers = torch.randn(4, 32, generator=g) * 3
    train_y, test_y = torch.arange(200) % 4, torch.arange(40) % 4
    train = centers[train_y] + torch.randn(200, 32, generator=g)
    test = centers[test_y] + torch.randn(40, 32, generator=g)
    assert torch.equal(knn_predict(train, train_y, test, 4, k=50), test_y)
