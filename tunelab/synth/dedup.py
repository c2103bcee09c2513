"""Near-duplicate detection: MinHash with LSH banding for Jaccard, and ROUGE-L.

MinHash estimates the Jaccard similarity of two shingle sets from `permutations` hash minima;
LSH banding (`bands` x `rows` = permutations) turns that into candidate pairs without comparing
every pair, and each candidate is then confirmed with the exact Jaccard, so the threshold means
exactly what it says (>= 0.8 is a duplicate, seed #4). With 32 bands of 4 rows, a pair at
Jaccard 0.8 becomes a candidate with probability 1 - (1 - 0.8^4)^32 > 0.9999.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict

MERSENNE = (1 << 61) - 1
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


def _stable_hash(shingle: tuple[str, ...]) -> int:
    # Python's hash() is salted per process; curation must not depend on PYTHONHASHSEED.
    return int.from_bytes(hashlib.blake2b(" ".join(shingle).encode(), digest_size=8).digest(), "little")


class MinHashIndex:
    """Kept items' signatures in LSH buckets; `near_duplicate_of` confirms with exact Jaccard."""

    def __init__(self, threshold: float, permutations: int = 128, bands: int = 32, seed: int = 0):
        if permutations % bands:
            raise ValueError(f"minhash permutations ({permutations}) must be a multiple of bands ({bands})")
        rng = random.Random(seed)
        self.coefficients = [(rng.randrange(1, MERSENNE), rng.randrange(MERSENNE)) for _ in range(permutations)]
        self.threshold = threshold
        self.bands, self.rows = bands, permutations // bands
        self.buckets: list[dict[tuple, list[int]]] = [defaultdict(list) for _ in range(bands)]
        self.sets: list[set] = []

    def signature(self, items: set) -> list[int]:
        hashes = [_stable_hash(item) for item in items] or [0]
        return [min((a * h + b) % MERSENNE for h in hashes) for a, b in self.coefficients]

    def _band_keys(self, signature: list[int]) -> list[tuple]:
        return [tuple(signature[b * self.rows : (b + 1) * self.rows]) for b in range(self.bands)]

    def near_duplicate_of(self, items: set) -> int | None:
        """Index of a kept set with Jaccard >= threshold, or None."""
        candidates: set[int] = set()
        for band, key in enumerate(self._band_keys(self.signature(items))):
            candidates.update(self.buckets[band].get(key, ()))
        for index in sorted(candidates):
            if jaccard(items, self.sets[index]) >= self.threshold:
                return index
        return None

    def add(self, items: set) -> None:
        index = len(self.sets)
        self.sets.append(items)
        for band, key in enumerate(self._band_keys(self.signature(items))):
            self.buckets[band][key].append(index)


class ExactJaccardIndex:
    """Every pair compared exactly: the reference MinHash is tested against."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.sets: list[set] = []

    def near_duplicate_of(self, items: set) -> int | None:
        return next((i for i, other in enumerate(self.sets) if jaccard(items, other) >= self.threshold), None)

    def add(self, items: set) -> None:
        self.sets.append(items)
