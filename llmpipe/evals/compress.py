"""A general-purpose compressor as a baseline: xz at its highest level (-9e by default) on the raw bytes.

Conditional coding: the bits xz spends on the held-out bytes after it has seen the training bytes
are bits(train + val) - bits(train), the figure comparable with a model trained on train. The
container's fixed overhead (what xz writes for no data) is taken off every count. As the xz tool
does for a file of known size, the dictionary shrinks to the input when the input is smaller than
preset 9's 64 MiB: the same coding, far less memory. PRESET_EXTREME (evaluate.baselines.xz_extreme,
on by default, as "the highest level" is the baseline's definition): on the demo corpus's old split it
took 40% longer and coded val in 1.5608 bits per byte against plain preset 9's 1.5593.
"""

from __future__ import annotations

import lzma
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MAX_DICT = 64 << 20  # preset 9's dictionary
MIN_DICT = 4096  # liblzma's smallest
GATHER_CHUNK = 1 << 20  # tokens turned into bytes at a time


def xz_size(data: bytes, extreme: bool = False) -> int:
    """Bytes of xz's output for `data` (no integrity check, preset 9, extreme if asked)."""
    dict_size = int(np.clip(len(data), MIN_DICT, MAX_DICT))
    preset = 9 | (lzma.PRESET_EXTREME if extreme else 0)
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size}]
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=filters))


OVERHEAD = xz_size(b"")


def xz_bits(data: bytes, extreme: bool = False) -> int:
    """Bits xz spends on `data`, less the container's fixed overhead."""
    return 8 * (xz_size(data, extreme) - OVERHEAD)


def xz_baseline(context: bytes, data: bytes, extreme: bool = False) -> dict[str, int]:
    """Bits for `data` after `context` (conditional) and alone. The compressions run in threads:
    liblzma releases the GIL."""
    with ThreadPoolExecutor(3) as pool:
        both, before, alone = pool.map(lambda d: xz_bits(d, extreme), [context + data, context, data])
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
