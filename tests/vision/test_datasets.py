import pytest
import torch

from lmforge.config import ConfigError
from lmforge.vision.datasets import COLOURS, POSITIONS, SHAPES, SIZES, load_image_dataset


def test_glyphs_are_deterministic_by_seed_and_splits_differ():
    a = load_image_dataset("digits", size=16, num=40, seed=3)
    b = load_image_dataset("digits", size=16, num=40, seed=3)
    c = load_image_dataset("digits", size=16, num=40, seed=3, split="test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (40, 1, 16, 16)
    assert a.images.min() >= -1 and a.images.max() <= 1
    # 8-bit grid: (x + 1) · 127.5 is an integer
    k = (a.images + 1) * 127.5
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert a.captions[0] == f"the digit {a.class_names[a.labels[0]]}"
    # each glyph leaves ink
    assert ((a.images > 0).flatten(1).sum(1) > 3).all()


def test_colour_letters_and_shapes_captions_match_attributes():
    let = load_image_dataset("letters", size=16, num=10, seed=0, channels=3)
    assert let.images.shape == (10, 3, 16, 16) and let.num_classes == 26
    s = load_image_dataset("shapes", size=24, num=30, seed=1)
    assert s.images.shape == (30, 3, 24, 24)
    for i in range(30):
        colour = list(COLOURS)[s.attributes["colour"][i]]
        size = SIZES[s.attributes["size"][i]]
        pos = POSITIONS[s.attributes["position"][i]]
        assert s.captions[i] == f"a {size} {colour} {SHAPES[s.labels[i]]} at the {pos}"
    # the shape's colour is the dominant non-black colour, at the stated third of the image
    i = 0
    img = (s.images[i] + 1) * 127.5
    mask = img.sum(0) > 200
    ys, xs = mask.nonzero(as_tuple=True)
    pos = int(s.attributes["position"][i])
    assert int(ys.float().mean() // 8) == pos // 3 and int(xs.float().mean() // 8) == pos % 3


def test_sklearn_digits_split_and_errors():
    pytest.importorskip("sklearn")
    tr = load_image_dataset("sklearn-digits", size=8, num=0, seed=0)
    te = load_image_dataset("sklearn-digits", size=8, num=0, seed=0, split="test")
    assert len(tr) + len(te) == 1797
    assert tr.images.shape[1:] == (1, 8, 8)
    with pytest.raises(ConfigError, match="expected one of"):
        load_image_dataset("cifar")
    with pytest.raises(ConfigError, match="split"):
        load_image_dataset("digits", num=2, split="val")
