"""Training: SFT and its PEFT comparison, preference pairs, alignment, resumable checkpoints and
compression of the aligned model.
"""
