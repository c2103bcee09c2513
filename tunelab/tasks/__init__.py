"""Verifiable tasks shared by training (pairs, rewards) and evaluation: IFEval-style instructions,
HumanEval and LeetCode problems, code quality, and the NLTK data the IFEval checkers need.
"""
