"""Verification at a fixed FAR by hand; margin-trained embeddings verify held-out identities
far better than an untrained network and better than plain softmax."""

import pytest
import torch

from lmforge.representation.verification import (
    EmbeddingNet,
    synthetic_identities,
    train_embedding,
    verification_at_far,
)


def test_verification_at_far_by_hand():
    # two identities, two samples each: genuine pairs at cos 1.0 and 0.6; impostor pairs
    # at 0, 0, 0.8, 0.8
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    ids = torch.tensor([0, 0, 1, 1])
    acc, tar = verification_at_far(e, ids, far=0.0)  # threshold = max impostor = 0.8
    assert tar == 0.5 and acc == pytest.approx((0.5 + 1.0) / 2)


def test_arcface_embeddings_verify_held_out_identities():
    test_x, test_y = synthetic_identities(20, 20, seed=99)  # identities never trained on
    torch.manual_seed(0)
    with torch.no_grad():
        _, tar_random = verification_at_far(EmbeddingNet()(test_x), test_y)
    arc, losses = train_embedding("arcface", steps=200, scale=16.0, margin=0.5)
    soft, _ = train_embedding("softmax", steps=200)
    with torch.no_grad():
        _, tar_arc = verification_at_far(arc(test_x), test_y)
        _, tar_soft = verification_at_far(soft(test_x), test_y)
    assert losses[-1] < 0.2 * losses[0]
    assert tar_arc > tar_soft > tar_random + 0.1
