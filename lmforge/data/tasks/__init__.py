"""Synthetic, verifiable data generated on the spot: nothing is downloaded."""

from lmforge.data.tasks.corpus import synthetic_corpus

__all__ = ["synthetic_corpus"]
