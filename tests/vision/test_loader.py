import torch

from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.loader import ImageLoader


def test_epochs_cover_the_data_and_resume_is_exact():
    ds = load_image_dataset("shapes", size=8, num=10, seed=0)
    loader = ImageLoader(ds, batch_size=4, seed=5)
    it = iter(loader)
    seen = [next(it)["labels"] for _ in range(5)]  # 20 items = 2 epochs exactly
    assert sum(len(s) for s in seen) == 20
    state = loader.state_dict()
    after = [next(it)["images"] for _ in range(3)]
    again = ImageLoader(ds, batch_size=4, seed=0)
    again.load_state_dict(state)
    it2 = iter(again)
    for want in after:
        assert torch.equal(next(it2)["images"], want)
    # one epoch is a permutation: every image exactly once
    loader2 = ImageLoader(ds, batch_size=5, seed=1)
    imgs = torch.cat([loader2.next_batch()["images"] for _ in range(2)])
    assert sorted(imgs.flatten(1).sum(1).tolist()) == sorted(ds.images.flatten(1).sum(1).tolist())
