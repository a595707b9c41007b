"""RNG states round-trip through JSON (what a checkpoint saves for exact resume)."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from lmforge.train.rng import rng_state, set_rng_state


def test_rng_state_round_trip():
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)
    set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
