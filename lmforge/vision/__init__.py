"""Images for the generative models: offline procedural datasets with labels and captions,
a resumable loader for the one Trainer, the evaluation classifier and its metrics, PNG grids.

| module | what |
|---|---|
| `datasets` | procedural digits / letters / coloured shapes with captions, sklearn's 8×8 digits; seeded splits |
| `loader` | endless, resumable shuffled batches of images and labels for the Trainer |
| `classifier` | the evaluation CNN trained on real images (per-attribute heads, features) |
| `metrics` | conditional accuracy, Fréchet distance in classifier features, bits/dim |
| `grid` | sample grids as PNG |
| `processor` | Qwen2-VL image processing (pixel budgets, CLIP normalisation, merge-block patches), image sources, placeholders, chat template |
| `vlm_tasks` | synthetic visual questions (colour, shape, position, count, OCR digits and words, two-image compare); held-out splits, accuracy |
| `vlm_data` | multimodal SFT records (assistant-only labels), packed image-text rows, resumable loader, greedy answering |
"""

from lmforge.vision.classifier import ImageClassifier, load_classifier, train_classifier
from lmforge.vision.datasets import ImageDataset, load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.loader import ImageLoader
from lmforge.vision.metrics import (
    bits_per_dim,
    classifier_frechet_distance,
    conditional_accuracy,
    frechet_distance,
)

__all__ = [
    "ImageClassifier",
    "ImageDataset",
    "ImageLoader",
    "bits_per_dim",
    "classifier_frechet_distance",
    "conditional_accuracy",
    "frechet_distance",
    "load_classifier",
    "load_image_dataset",
    "save_grid",
    "train_classifier",
]
