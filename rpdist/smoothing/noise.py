"""Counter-based Gaussian noise: every (seed, input id, phase, block) has a stream of its own.

A block's generator seed is ``base(seed, input id) + 3·block + phase``, modulo the width of seed
the device's generator keeps, where ``base`` is a cryptographic hash of the run seed and the input
id. torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so seeds are made 32-bit
here on purpose rather than truncated by torch: every bit of the run seed and the input id goes
into the hash, and ``3·block + phase`` is injective, so **two blocks of one input never share a
seed** (selection, estimation and PREDICT included) for up to 2^32 / 3 blocks per phase. Distinct
mt19937 seeds give distinct streams, which keeps the binomial model of the counts exact. Blocks of
*different* inputs may share a 32-bit seed on CPU; each certificate uses only its own input's
samples, so that costs no validity. The CUDA generator (Philox) keeps 64 bits, and seeds there
are 64-bit by the same formula.

Because a block's noise depends only on those four numbers, the block's length and the device
type, the plan of work units — and so the number of workers, retries or actor restarts — cannot
change any count. Blocks of a phase are consecutive pieces of one stream family, so N = 1k, 10k,
100k are nested prefixes whenever the block boundaries line up.
"""

from __future__ import annotations

import hashlib
import struct
from enum import IntEnum

DEFAULT_BLOCK = 1000
NOISE_SCHEME = 2  # recorded with every run: results of different schemes are never mixed on resume
CPU_SEED_BITS = 32  # torch's CPU generator, mt19937, keeps only the low 32 bits of manual_seed
CUDA_SEED_BITS = 64  # torch's CUDA generator, Philox, keeps all 64
NUM_PHASES = 3
MAX_BLOCKS = (1 << CPU_SEED_BITS) // NUM_PHASES  # blocks per phase that keep one input's seeds distinct


class Phase(IntEnum):
    """Independent sample streams: selection never shares a sample with estimation."""

    SELECTION = 0
    ESTIMATION = 1
    PREDICT = 2


def stream_base(seed: int, input_id: int) -> int:
    """A 64-bit cryptographic hash of the run seed and the input id: all 128 bits count."""
    digest = hashlib.blake2b(struct.pack("<2q", seed, input_id), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def block_seed(seed: int, input_id: int, phase: int, block: int, bits: int = CPU_SEED_BITS) -> int:
    """The generator seed of one block, ``bits`` wide; injective in (phase, block) for one input."""
    if not 0 <= phase < NUM_PHASES or not 0 <= block < MAX_BLOCKS:
        raise ValueError(f"phase {phase} or block {block} out of range")
    return (stream_base(seed, input_id) + NUM_PHASES * block + phase) & ((1 << bits) - 1)


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

    bits = CUDA_SEED_BITS if out.device.type == "cuda" else CPU_SEED_BITS
    generator.manual_seed(block_seed(seed, input_id, phase, block, bits))
    torch.randn(out.shape, generator=generator, out=out, device=out.device, dtype=out.dtype)
