"""Counter-based Gaussian noise: every (seed, input id, phase, block) has a stream of its own.

Because a block's noise depends only on those four numbers and the block's length, the plan of
work units — and so the number of workers, retries or actor restarts — cannot change any count.
Blocks of a phase are consecutive pieces of one stream, so N = 1k, 10k, 100k are nested prefixes
whenever the block boundaries line up.
"""

from __future__ import annotations

import hashlib
import struct
from enum import IntEnum

DEFAULT_BLOCK = 1000
NOISE_SCHEME = 2  # recorded with every run: results of different schemes are never mixed on resume
_MASK63 = (1 << 63) - 1


class Phase(IntEnum):
    """Independent sample streams: selection never shares a sample with estimation."""

    SELECTION = 0
    ESTIMATION = 1
    PREDICT = 2


def block_seed(seed: int, input_id: int, phase: int, block: int) -> int:
    """A 63-bit generator seed, a cryptographic hash of the block's coordinates."""
    digest = hashlib.blake2b(struct.pack("<4q", seed, input_id, phase, block), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def block_lengths(n: int, block_size: int, start: int = 0, stop: int | None = None) -> list[int]:
    """Sample counts of blocks [start, stop) of an n-sample phase; only the last may be short."""
    count = num_blocks(n, block_size)
    stop = count if stop is None else stop
    return [min(block_size, n - b * block_size) for b in range(start, stop)]


def num_blocks(n: int, block_size: int) -> int:
    return -(-n // block_size)


def fill_block(out, generator, seed: int, input_id: int, phase: int, block: int) -> None:
    """Write the block's standard-normal noise into the tensor ``out`` (its length is the block length).

    torch is imported here, not at module level, so that the CLI and planning code start fast.
    """
    import torch

    generator.manual_seed(block_seed(seed, input_id, phase, block))
    torch.randn(out.shape, generator=generator, out=out, device=out.device, dtype=out.dtype)
