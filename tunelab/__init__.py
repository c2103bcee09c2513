"""TuneLab: a DVC-versioned post-training lab for small language models.

The stages in `stages/` are thin entry points; everything they call lives here, grouped by phase.
Lower packages never import higher ones:

    core <- sandbox <- tasks <- synth <- train <- eval <- track

No module in this package reads params.yaml itself: stages pass typed settings in.
"""
