import torch

from lmforge.vision.classifier import load_classifier, train_classifier
from lmforge.vision.datasets import load_image_dataset


def test_classifier_learns_shapes_and_roundtrips(tmp_path):
    train = load_image_dataset("shapes", size=8, num=300, seed=0)
    test = load_image_dataset("shapes", size=8, num=100, seed=0, split="test")
    clf = train_classifier(train, steps=80, batch_size=32, lr=1e-2, width=8)
    pred = clf.predict(test.images)
    assert set(pred) == {"label", "colour", "size", "position"}
    position_acc = (pred["position"] == test.attributes["position"]).float().mean()
    assert position_acc > 0.6  # 9 positions: chance is 0.11
    back = load_classifier(clf.save(tmp_path / "clf"))
    assert torch.equal(back.embed(test.images), clf.embed(test.images))
