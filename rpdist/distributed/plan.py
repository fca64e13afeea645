"""The work plan: how a job is cut into units and chunks, a pure function of the job.

A *unit* is (rows of a chunk of inputs, phase, range of noise blocks). The plan depends only on
the number of inputs, the sample sizes, the noise block and the batch size — never on the number
of workers — so every split of the work yields bit-identical counts. A *chunk* is the group of
inputs whose results are written together; the driver only ever holds the chunks in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable

from rpdist.smoothing.noise import num_blocks

UNIT_BATCHES = 8  # forward batches per unit: enough work to hide Ray's per-call cost
CHUNK_SAMPLES = 1 << 24  # samples per written chunk: bounds what a crash can lose
MAX_CHUNK_INPUTS = 2048


@dataclass(frozen=True)
class PhaseSpec:
    """A phase of n samples; a sequential round computes only its blocks [first_block, stop_block)."""

    phase: int
    n: int
    first_block: int = 0
    stop_block: int | None = None

    def block_range(self, block_size: int) -> tuple[int, int]:
        total = num_blocks(self.n, block_size)
        return self.first_block, total if self.stop_block is None else min(self.stop_block, total)

    def samples(self, block_size: int) -> int:
        """Samples per input in this spec's block range (only the phase's last block may be short)."""
        first, stop = self.block_range(block_size)
        return max(0, min(self.n, stop * block_size) - first * block_size)


@dataclass(frozen=True)
class Unit:
    chunk: int
    row_start: int
    row_stop: int
    phase: int
    n: int
    block_start: int
    block_stop: int


@dataclass(frozen=True)
class Plan:
    """How a job is cut into units and chunks; a pure function of the job, not of the cluster."""

    num_inputs: int
    phases: tuple[PhaseSpec, ...]
    block_size: int
    batch_size: int
    unit_batches: int = UNIT_BATCHES  # fewer for a sequential round too small to give every replica work

    @property
    def unit_samples(self) -> int:
        return self.unit_batches * self.batch_size

    def blocks_per_unit(self, spec: PhaseSpec) -> int:
        first, stop = spec.block_range(self.block_size)
        return max(1, min(stop - first, self.unit_samples // self.block_size))

    @property
    def unit_inputs(self) -> int:
        per_input = min(max(spec.samples(self.block_size) for spec in self.phases), self.unit_samples)
        return max(1, self.unit_samples // max(1, per_input))

    @property
    def chunk_inputs(self) -> int:
        per_input = max(1, sum(spec.samples(self.block_size) for spec in self.phases))
        units = max(1, CHUNK_SAMPLES // (self.unit_inputs * per_input))
        return max(self.unit_inputs, min(MAX_CHUNK_INPUTS // self.unit_inputs, units) * self.unit_inputs)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_inputs // self.chunk_inputs)

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_inputs
        return start, min(start + self.chunk_inputs, self.num_inputs)

    def units(self, chunk: int) -> list[Unit]:
        start, stop = self.chunk_rows(chunk)
        out = []
        for row in range(start, stop, self.unit_inputs):
            row_stop = min(row + self.unit_inputs, stop)
            for spec in self.phases:
                (first, total), step = spec.block_range(self.block_size), self.blocks_per_unit(spec)
                for block in range(first, total, step):
                    out.append(Unit(chunk, row, row_stop, spec.phase, spec.n, block, min(block + step, total)))
        return out

    def unit_samples_of(self, unit: Unit) -> int:
        first = unit.block_start * self.block_size
        last = min(unit.n, unit.block_stop * self.block_size)
        return (unit.row_stop - unit.row_start) * (last - first)

    def samples(self, chunks: Iterable[int]) -> int:
        per_input = sum(spec.samples(self.block_size) for spec in self.phases)
        return sum(stop - start for start, stop in map(self.chunk_rows, chunks)) * per_input
