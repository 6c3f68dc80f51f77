"""MinHash near-duplicate detection, in FineWeb's setting (word 5-grams, 112 permutations as 14 bands
of 8 rows), vectorized so that signatures cost numpy passes rather than Python calls per shingle.

- `ShingleHasher`: 32-bit hashes of the n-grams of documents' normalized text, for a whole batch in
  numpy (no Python call per word or shingle). Text written without spaces (Chinese, Japanese, Thai)
  is shingled by character n-grams instead.
- `signatures`: datasketch's MinHash of those hashes (its default `affine32` scheme: the MurmurHash3
  finalizer, then h -> a*h + b mod 2^32 for each permutation (a, b) that datasketch draws from the
  seed), computed for a whole shard at once with np.minimum.reduceat. Equal to datasketch.MinHash
  fed the same hashes (tested).
- `band_keys` and `candidate_pairs`: each band of rows hashed to one uint64 key; documents whose keys
  are equal in any band are candidates, found by sorting each band's key column (arrays, one band at a
  time, not an in-memory LSH index of Python objects).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import xxhash
from datasketch import MinHash

from llmpipe.data.text import normalized_text

_M32 = np.uint32(0xFFFFFFFF)


# MurmurHash3's finalizer constants per width: a fixed avalanching bijection (datasketch's pre-mix for
# affine32 is the 32-bit one).
_FMIX = {32: (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16), 64: (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33)}


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer for the array's width (uint32 or uint64), wrapping like the C original."""
    t = h.dtype.type
    s1, m1, s2, m2, s3 = _FMIX[h.dtype.itemsize * 8]
    with np.errstate(over="ignore"):
        h = (h ^ (h >> t(s1))) * t(m1)
        h = (h ^ (h >> t(s2))) * t(m2)
    return h ^ (h >> t(s3))


# A text averaging more characters per 'word' than this is written without spaces (its 'words' are
# whole phrases): it is shingled by characters.
SPACELESS_CHARS_PER_WORD = 12


class ShingleHasher:
    """n-gram shingle hashes of normalized text, computed in numpy over a whole batch of documents.

    Each document is normalized (llmpipe.data.text.normalized_text: case, compatibility forms,
    punctuation and whitespace folded) and the batch is laid out as one byte buffer. A word's hash is a
    polynomial hash of its bytes (prefix sums of bytes times powers of an odd 64-bit base, so every
    word costs a few vectorized operations and no Python call), finished with MurmurHash3's 64-bit mixer;
    an n-gram's hash mixes its n word hashes with odd multipliers. Scripts written without spaces are
    hashed by characters instead of words. The seed picks the base and multipliers."""

    def __init__(self, n: int, seed: int):
        self.n = n
        rng = np.random.default_rng([seed, n])
        self.base = rng.integers(1, 2**63, dtype=np.uint64) | np.uint64(1)
        self.mix = rng.integers(1, 2**63, size=n, dtype=np.uint64) | np.uint64(1)  # odd multipliers

    def __call__(self, text: str) -> np.ndarray:
        return self.shard([text])[1]

    def shard(self, texts: list[str], batch_bytes: int = 1 << 19) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                             np.ndarray]:
        """For a list of documents: (exact-duplicate hashes (n,) uint64 of their normalized word
        sequences, all shingle hashes concatenated (uint32), offsets (n + 1,) of each document's
        shingles, units (n,): words, or characters for spaceless text). Hashed `batch_bytes` of text at a
        time, a longer document piece by piece, so the per-byte temporaries (~40 bytes per byte of text)
        stay bounded whatever the documents' sizes."""
        parts, group, size = [], [], 0
        for t in texts:
            if len(t) > batch_bytes:  # alone, in pieces cut between words
                if group:
                    parts.append(self._batch(group))
                    group, size = [], 0
                parts.append(self._long(t, batch_bytes))
                continue
            group.append(t)
            size += len(t)
            if size >= batch_bytes:
                parts.append(self._batch(group))
                group, size = [], 0
        if group or not parts:
            parts.append(self._batch(group))
        exact = np.concatenate([p[0] for p in parts])
        shingles = np.concatenate([p[1] for p in parts])
        counts = np.concatenate([np.diff(p[2]) for p in parts])
        units = np.concatenate([p[3] for p in parts])
        return exact, shingles, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), units

    def _batch(self, texts: list[str]):
        h, units = self._unit_hashes([normalized_text(t).encode("utf-8") for t in texts])
        return self._shingles(h, units)

    def _long(self, text: str, piece: int):
        """One long document: its unit hashes piece by piece (a unit's hash does not depend on where it
        stands, so cutting between units changes nothing), then its shingles from those hashes."""
        data = normalized_text(text).encode("utf-8")
        buf = np.frombuffer(data, dtype=np.uint8)
        chars = words = 0
        for s in range(0, len(buf), piece):  # is the document written without spaces? (counts only)
            b = buf[s : s + piece]
            sep = (b == 32) | (b == 10)
            prev_sep = np.r_[s == 0 or buf[s - 1] in (32, 10), sep[:-1]]
            chars += int(np.count_nonzero(~sep & ((b & 0xC0) != 0x80)))
            words += int(np.count_nonzero(~sep & prev_sep))
        spaceless = chars > SPACELESS_CHARS_PER_WORD * max(words, 1)
        cuts, pos = [0], piece
        while pos < len(data):  # cut at a separator (words) or at a character's first byte (spaceless)
            if spaceless:
                while pos < len(data) and (data[pos] & 0xC0) == 0x80:
                    pos += 1
            else:
                ends = [i for i in (data.find(b" ", pos), data.find(b"\n", pos)) if i >= 0]
                pos = min(ends) if ends else len(data)
            cuts.append(pos)
            pos += piece
        cuts.append(len(data))
        hashes, n_units = [], 0
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a:
                h, units = self._unit_hashes([data[a:b]], np.array([spaceless]))
                hashes.append(h)
                n_units += int(units[0])
        h = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        return self._shingles(h, np.array([n_units], dtype=np.int64))

    def _unit_hashes(self, docs: list[bytes], spaceless: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The hash of every unit (word, or character of spaceless text) of the documents, in order, and
        how many units each has. `spaceless` (per document) is decided from the text when not given."""
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        buf = np.frombuffer(b"".join(d + b"\n" for d in docs), dtype=np.uint8)
        doc_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]) if len(docs) else lengths
        doc_end = doc_start + lengths
        sep = (buf == 32) | (buf == 10)
        word_start = ~sep & np.r_[True, sep[:-1]]
        word_end = ~sep & np.r_[sep[1:], True]

        def per_doc(mask: np.ndarray) -> np.ndarray:  # how many True in each document's bytes
            total = np.r_[0, np.cumsum(mask)]
            return total[doc_end] - total[doc_start]

        char_start = ~sep & ((buf & 0xC0) != 0x80)  # not a UTF-8 continuation byte
        if spaceless is None:
            spaceless = per_doc(char_start) > SPACELESS_CHARS_PER_WORD * np.maximum(per_doc(word_start), 1)
        if spaceless.any():  # those documents' units are characters (spaces dropped)
            in_spaceless = np.repeat(spaceless, lengths + 1)
            unit_start = np.where(in_spaceless, char_start, word_start)
            bounds = np.flatnonzero(sep | unit_start)
            starts = np.flatnonzero(unit_start)
            ends = bounds[np.searchsorted(bounds, starts, side="right")]
        else:
            starts, ends = np.flatnonzero(word_start), np.flatnonzero(word_end) + 1
        # polynomial hash of buf[s:e]: (P[e] - P[s]) / base^s, with P the prefix sums of (byte + 1) * base^i;
        # dividing by base^s is multiplying by its inverse mod 2^64, which exists as the base is odd
        with np.errstate(over="ignore"):
            pw = _powers_of(int(self.base), len(buf) + 1)
            prefix = np.r_[np.uint64(0), np.cumsum((buf.astype(np.uint64) + np.uint64(1)) * pw[: len(buf)],
                                                   dtype=np.uint64)]
            inv = pow(int(self.base), -1, 2**64)
            inv_pw = _powers_of(inv, len(buf) + 1)
            h = (prefix[ends] - prefix[starts]) * inv_pw[starts] + (ends - starts).astype(np.uint64)
        units = np.searchsorted(starts, doc_end) - np.searchsorted(starts, doc_start)
        return _fmix(h), units

    def _shingles(self, h: np.ndarray, units: np.ndarray):
        """Exact-duplicate hashes, n-gram shingle hashes (uint32), offsets and units, from unit hashes."""
        with np.errstate(over="ignore"):
            first = np.concatenate([[0], np.cumsum(units)[:-1]]) if len(units) else units
            # exact duplicates: equal sequences of word (or character) hashes, whatever the spacing
            hb = h.tobytes()
            exact = np.array([xxhash.xxh3_64_intdigest(hb[8 * f : 8 * (f + u)]) for f, u in zip(first, units)],
                             dtype=np.uint64)
            n = self.n
            acc = np.zeros(max(len(h) - n + 1, 0), dtype=np.uint64)
            for k in range(n):
                acc += h[k : k + len(acc)] * self.mix[k]
            counts = np.where(units >= n, units - n + 1, np.minimum(units, 1))  # short text: one shingle
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts) + np.repeat(first, counts)
            out = np.empty(offsets[-1], dtype=np.uint64)
            whole = np.repeat(units >= n, counts)
            out[whole] = acc[pos[whole]]
            for d in np.flatnonzero((units > 0) & (units < n)):  # shorter than n units: one shingle of all
                out[offsets[d]] = (h[first[d] : first[d] + units[d]] * self.mix[: units[d]]).sum(dtype=np.uint64)
        return exact, (out >> np.uint64(32)).astype(np.uint32), offsets, units


_POWERS: dict[int, np.ndarray] = {}


def _powers_of(x: int, length: int) -> np.ndarray:
    """x^0 .. x^(length - 1) mod 2^64, cached and grown by doubling."""
    have = _POWERS.get(x)
    if have is None or len(have) < length:
        size = max(length, 2 * len(have) if have is not None else 1 << 16)
        out = np.empty(size, dtype=np.uint64)
        out[0], step = 1, 1
        with np.errstate(over="ignore"):
            while step < size:  # out[step:2 step] = out[:step] * x^step
                take = min(step, size - step)
                out[step : step + take] = out[:take] * np.uint64(pow(x, step, 2**64))
                step *= 2
        _POWERS[x] = have = out
    return have[:length]


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's (a, b) for this seed and scheme, so our signatures are its signatures."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(shingles: list[np.ndarray], num_perm: int, seed: int, chunk: int = 2048) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures of per-document shingle-hash arrays."""
    lengths = np.array([len(x) for x in shingles], dtype=np.int64)
    flat = np.concatenate(shingles).astype(np.uint32) if len(shingles) else np.empty(0, np.uint32)
    return signatures_flat(flat, np.concatenate([[0], np.cumsum(lengths)]), num_perm, seed, chunk)


def signatures_flat(flat: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int,
                    chunk: int = 2048) -> np.ndarray:
    """Signatures of documents whose shingle hashes are flat[offsets[d]:offsets[d + 1]]. A document
    without shingles gets all 0xFFFFFFFF (datasketch's empty value; callers skip such documents)."""
    a, b = permutations(num_perm, seed)
    lengths = np.diff(offsets)
    out = np.full((len(lengths), num_perm), _M32, dtype=np.uint32)
    nonempty = np.flatnonzero(lengths)
    if len(nonempty) == 0:
        return out
    flat = _fmix(flat.astype(np.uint32))
    starts = offsets[:-1][nonempty]
    # documents are taken a chunk of rows at a time so each (rows x num_perm) temporary stays in cache
    doc = 0
    while doc < len(nonempty):
        last = max(int(np.searchsorted(starts, starts[doc] + chunk, side="left")), doc + 1)
        lo = starts[doc]
        hi = starts[last] if last < len(nonempty) else offsets[-1]
        if last == doc + 1 and hi - lo > chunk:  # one long document: its rows block by block
            sig = out[nonempty[doc]]
            for s in range(lo, hi, chunk):
                np.minimum(sig, (flat[s : min(s + chunk, hi), None] * a + b).min(axis=0), out=sig)
        else:
            phv = flat[lo:hi, None] * a + b  # uint32 arithmetic wraps: mod 2^32, as datasketch computes it
            out[nonempty[doc:last]] = np.minimum.reduceat(phv, starts[doc:last] - lo, axis=0)
        doc = last
    return out


_BAND_MIX = np.random.default_rng(20240520).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: one key per band of `rows` signature values (a multiply-add of the rows
    by fixed odd constants, then MurmurHash3's 64-bit finalizer)."""
    if sigs.shape[1] < bands * rows:
        raise ValueError(f"signatures have {sigs.shape[1]} values, bands x rows needs {bands * rows}")
    wide = sigs[:, : bands * rows].astype(np.uint64).reshape(len(sigs), bands, rows)
    with np.errstate(over="ignore"):
        return _fmix((wide * _BAND_MIX[:rows]).sum(axis=2, dtype=np.uint64))


def candidate_pairs(columns: Iterable[np.ndarray], all_pairs_max: int = 1, neighbours: int = 0) -> np.ndarray:
    """(pairs, 2) int64 of document indices (i < j) with equal keys in any column (a band's keys, or
    exact-duplicate hashes), one column in memory at a time.

    Which pairs of a group (bucket) of equal keys are listed, members in index order (the sort is stable):
    - a group of at most `all_pairs_max` members: all its pairs, so every true pair in it can be verified;
    - a larger group: each member with the group's first (lowest-index) member and with its next
      `neighbours` members in index order, so at most (1 + neighbours) pairs per member however big the
      bucket (a true pair further apart than `neighbours` is found only through other bands).
    The defaults (1, 0) list the star of each group around its first member: enough for connected
    components when every key equality means a duplicate (exact hashes), not when pairs are verified."""
    found = []
    for col in columns:
        order = np.argsort(col, kind="stable")
        sorted_keys = col[order]
        new_group = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        if new_group.all():
            continue
        starts = np.flatnonzero(new_group)
        sizes = np.diff(np.r_[starts, len(col)])
        # members of groups of two or more only (most keys are unique): their positions, group start, size
        multi = sizes >= 2
        pos = np.repeat(starts[multi], sizes[multi]) + _ranks(sizes[multi])
        g_start = np.repeat(starts[multi], sizes[multi])
        g_end = g_start + np.repeat(sizes[multi], sizes[multi])
        small = (g_end - g_start) <= all_pairs_max
        in_group = pos != g_start
        found.append(np.stack([order[g_start[in_group]], order[pos[in_group]]], axis=1))  # the star
        reach = min(max(all_pairs_max - 1, neighbours), int(sizes.max()) - 1)
        for d in range(1, reach + 1):  # each member with the member d places after it
            # pairs with the first member are in the star already
            ok = (pos + d < g_end) & (small | (d <= neighbours)) & in_group
            if not ok.any():
                continue
            found.append(np.stack([order[pos[ok]], order[pos[ok] + d]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def _ranks(sizes: np.ndarray) -> np.ndarray:
    """0, 1, .., size - 1 for each size, concatenated."""
    total = int(sizes.sum())
    return np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)


class UnionFind:
    """Connected components; the lowest index of a component is its root, hence the document kept."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two documents' shingle-hash sets."""
    sa, sb = np.unique(a), np.unique(b)
    if len(sa) == 0 and len(sb) == 0:
        return 1.0
    inter = len(np.intersect1d(sa, sb, assume_unique=True))
    return inter / (len(sa) + len(sb) - inter)
