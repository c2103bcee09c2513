"""TuneLab: a DVC-versioned post-training lab for small language models.

The stages in `stages/` are thin entry points; everything they call lives here.
No module in this package reads params.yaml itself: stages pass typed configs in.
"""
