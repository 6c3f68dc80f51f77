"""A general-purpose compressor as a baseline: xz at its strongest setting on the raw bytes.

Conditional coding: the bits xz spends on the held-out bytes after it has seen the training bytes
are bits(train + val) - bits(train), the figure comparable with a model trained on train. The
container's fixed overhead (what xz writes for no data) is taken off every count. As the xz tool
does for a file of known size, the dictionary shrinks to the input when the input is smaller than
preset 9's 64 MiB: the same coding, far less memory.
"""

from __future__ import annotations

import lzma
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PRESET = 9 | lzma.PRESET_EXTREME
MAX_DICT = 64 << 20  # preset 9's dictionary
MIN_DICT = 4096  # liblzma's smallest
GATHER_CHUNK = 1 << 20  # tokens turned into bytes at a time


def xz_size(data: bytes) -> int:
    """Bytes of xz's output for `data` (no integrity check, preset 9 extreme)."""
    dict_size = int(np.clip(len(data), MIN_DICT, MAX_DICT))
    filters = [{"id": lzma.FILTER_LZMA2, "preset": PRESET, "dict_size": dict_size}]
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=filters))


OVERHEAD = xz_size(b"")


def xz_bits(data: bytes) -> int:
    """Bits xz spends on `data`, less the container's fixed overhead."""
    return 8 * (xz_size(data) - OVERHEAD)


def xz_baseline(context: bytes, data: bytes) -> dict[str, int]:
    """Bits for `data` after `context` (conditional) and alone. The compressions run in threads:
    liblzma releases the GIL."""
    with ThreadPoolExecutor(3) as pool:
        both, before, alone = pool.map(xz_bits, [context + data, context, data])
    return {"conditional_bits": both - before, "alone_bits": alone}


def stream_bytes(ids: np.ndarray, pieces: list[bytes]) -> bytes:
    """The bytes a token stream stands for (`pieces`: llmpipe.tokens.bpe.token_bytes). A special token
    (no bytes) becomes one NUL byte: the compressor pays to code a document boundary as the model pays
    to predict the end-of-text token, while the byte count of bits per byte leaves both out."""
    lengths = np.array([len(p) or 1 for p in pieces], dtype=np.int64)
    flat = np.frombuffer(b"".join(p or b"\0" for p in pieces), dtype=np.uint8)
    offsets = np.cumsum(lengths) - lengths
    out = []
    for s in range(0, len(ids), GATHER_CHUNK):
        chunk = np.asarray(ids[s : s + GATHER_CHUNK], dtype=np.int64)
        n = lengths[chunk]
        # each output byte's index into `flat`: its token's start plus its place within the token
        idx = np.repeat(offsets[chunk] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        out.append(flat[idx].tobytes())
    return b"".join(out)
