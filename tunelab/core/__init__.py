"""Plumbing every phase shares: typed params, file IO, the stage contract, model loading,
batched generation, multi-process launch, resumable work, profiles and measurements.
"""
