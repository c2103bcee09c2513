"""Synthetic instruction data: teachers, Magpie, Self-Instruct, code problems as data, imports of
existing chat data, curation, near-duplicate detection and the data card.
"""
