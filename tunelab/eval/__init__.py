"""Evaluation: lm-evaluation-harness integration and TuneLab's own lm-eval tasks, the judge,
paired statistics, and the per-variant evaluation.
"""
