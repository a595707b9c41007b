"""Data: sources, packing, training formats and synthetic tasks (`lmforge.data.tasks`)."""
