"""Near-duplicate removal with MinHash LSH (datasketch) over character shingles.

Character shingles (not words) so that Chinese, which has no spaces, is compared as fairly as
English. The first record of a near-duplicate group is kept, so the result is deterministic
for a given file order."""

from __future__ import annotations

import zlib
from typing import Sequence


def _hash32(data: bytes) -> int:
    return zlib.crc32(data)  # fast and stable across runs (Python's hash() is salted)


def shingles(text: str, k: int) -> set[bytes]:
    compact = " ".join(text.casefold().split())
    if len(compact) <= k:
        return {compact.encode("utf-8")}
    return {compact[i : i + k].encode("utf-8") for i in range(len(compact) - k + 1)}


def near_duplicates(texts: Sequence[str], *, threshold: float, num_perm: int, shingle: int, seed: int = 1) -> dict[int, int]:
    """Map index -> index of the earlier record it nearly duplicates (estimated Jaccard >= threshold)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    # One set of permutations shared by every MinHash: datasketch builds them per object otherwise.
    proto = MinHash(num_perm=num_perm, seed=seed, hashfunc=_hash32)
    dupes: dict[int, int] = {}
    kept_sigs: dict[int, "MinHash"] = {}
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=_hash32, permutations=proto.permutations, scheme=proto.scheme)
        m.update_batch(list(shingles(text, shingle)))
        hits = lsh.query(m)
        # LSH returns candidates; confirm with the signature estimate so the threshold means what it says
        best = min((j for j in hits if kept_sigs[j].jaccard(m) >= threshold), default=None)
        if best is not None:
            dupes[i] = best
            continue
        lsh.insert(i, m)
        kept_sigs[i] = m
    return dupes
