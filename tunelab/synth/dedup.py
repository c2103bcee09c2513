"""Near-duplicate detection: MinHash with LSH banding for Jaccard (datasketch), and ROUGE-L.

MinHash estimates the Jaccard similarity of two shingle sets from `permutations` hash minima;
LSH banding (`bands` x `rows` = permutations) turns that into candidate pairs without comparing
every pair (datasketch's `MinHash` and `MinHashLSH`), and each candidate is then confirmed with the
exact Jaccard, so the threshold means exactly what it says (>= 0.8 is a duplicate, seed #4). With
32 bands of 4 rows, a pair at Jaccard 0.8 becomes a candidate with probability
1 - (1 - 0.8^4)^32 > 0.9999.
"""

from __future__ import annotations

import re
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def shingles(text: str, size: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < size:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class MinHashIndex:
    """Kept items' MinHash signatures in LSH buckets (datasketch); `near_duplicate_of` confirms each
    candidate with the exact Jaccard, so the LSH only decides which pairs are compared."""

    def __init__(self, threshold: float, permutations: int = 128, bands: int = 32, seed: int = 0):
        from datasketch import MinHashLSH

        if permutations % bands:
            raise ValueError(f"minhash permutations ({permutations}) must be a multiple of bands ({bands})")
        self.threshold, self.permutations, self.seed = threshold, permutations, seed
        # params fixes the banding; without it datasketch derives one from the threshold.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=permutations, params=(bands, permutations // bands))
        self.sets: list[set] = []

    def signature(self, items: set) -> Any:
        from datasketch import MinHash

        # datasketch's default hash is SHA-1 (not Python's per-process salted hash()), so the
        # same rows give the same signatures in every run.
        minhash = MinHash(num_perm=self.permutations, seed=self.seed)
        minhash.update_batch([" ".join(item).encode() for item in items])
        return minhash

    def near_duplicate_of(self, items: set) -> int | None:
        """Index of a kept set with Jaccard >= threshold, or None."""
        for index in sorted(self.lsh.query(self.signature(items))):
            if jaccard(items, self.sets[index]) >= self.threshold:
                return index
        return None

    def add(self, items: set) -> None:
        self.lsh.insert(len(self.sets), self.signature(items))
        self.sets.append(items)


class ExactJaccardIndex:
    """Every pair compared exactly: the reference MinHash is tested against."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.sets: list[set] = []

    def near_duplicate_of(self, items: set) -> int | None:
        return next((i for i, other in enumerate(self.sets) if jaccard(items, other) >= self.threshold), None)

    def add(self, items: set) -> None:
        self.sets.append(items)
