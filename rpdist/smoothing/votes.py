"""Vote counting on one device: the inner loop of every Monte Carlo estimate in rpdist.

Many (input, noise block) pairs are packed into each forward batch so that small models still
fill the device; predictions are counted with one ``bincount`` per batch, on the device, and only
the integer count matrix leaves it. This class knows nothing of Ray, so it is tested directly.

A sample whose logits hold any NaN or inf casts no vote for a class: it is counted in one extra
slot after the classes (index ``num_classes``), which the driver strips before any decision.

On CPU the model sees a packed batch in slices of at most ``CPU_FORWARD_ROWS`` rows, so that each
activation of a built-in CNN stays below glibc's largest mmap threshold (32 MiB; a 4,000-row call
makes mnist5k's 100 MB), and a replica that keeps its freed memory
(:mod:`rpdist.distributed.allocator`) reuses it instead of page-faulting it in on every call. The plan,
the noise and the packing are unchanged, and the built-in models compute their rows independently, so
the counts are the same bits (``benchmarks/cpu_forward.py`` checks and measures).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from rpdist.errors import ModelError
from rpdist.models.refs import ModelRef
from rpdist.smoothing.noise import block_lengths, fill_block

CPU_FORWARD_ROWS = 1024  # rows per model call on CPU; a GPU takes the whole packed batch


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class VoteCounter:
    """Holds one model replica and counts f(x + σε) over counter-based noise blocks."""

    def __init__(self, model_ref: ModelRef, device: str | None = None):
        self.device = pick_device(device)
        self.model = model_ref.load(self.device)
        self.generator = torch.Generator(device=self.device)
        self.forward_rows = CPU_FORWARD_ROWS if self.device.type == "cpu" else None

    def logits(self, samples: torch.Tensor) -> torch.Tensor:
        """The model over ``samples``, called on slices of at most ``forward_rows`` rows."""
        if self.forward_rows is None or len(samples) <= self.forward_rows:
            return self.model(samples)
        return torch.cat([self.model(part) for part in samples.split(self.forward_rows)])

    @torch.inference_mode()
    def count(
        self,
        x: np.ndarray,
        input_ids: np.ndarray,
        *,
        phase: int,
        n: int,
        block_start: int,
        block_stop: int,
        sigma: float,
        seed: int,
        block_size: int,
        batch_size: int,
        num_classes: int,
    ) -> np.ndarray:
        """Votes per (input, block, class) for blocks [block_start, block_stop) of an n-sample phase.

        Returns int64 [len(x), block_stop - block_start, num_classes + 1]; the last slot counts the
        samples whose logits were not all finite. Raises :class:`ModelError` if the model raises.
        """
        xs = torch.tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.device)
        lengths = block_lengths(n, block_size, block_start, block_stop)
        capacity = max(batch_size, max(lengths))
        shape = tuple(xs.shape[1:])
        buffer = torch.empty((capacity, *shape), device=self.device)
        counts = torch.zeros(len(xs) * len(lengths) * (num_classes + 1), dtype=torch.int64, device=self.device)
        # Pairs (input i, block j) in order, cut into forward batches of whole blocks. Per batch: one
        # noise draw per block into the buffer, one scale of the whole batch, one add per run of
        # pairs of the same input (contiguous), one owner vector. Every step is elementwise and exactly
        # rounded, so the packing cannot change a bit of any sample.
        batch, filled = [], 0
        for i in range(len(xs)):
            for j, length in enumerate(lengths):
                if filled + length > capacity:
                    self._batch(buffer, batch, filled, xs, counts, sigma, seed, input_ids, phase, block_start,
                                len(lengths), num_classes)
                    batch, filled = [], 0
                batch.append((i, j, length))
                filled += length
        if batch:
            self._batch(buffer, batch, filled, xs, counts, sigma, seed, input_ids, phase, block_start, len(lengths),
                        num_classes)
        return counts.view(len(xs), len(lengths), num_classes + 1).cpu().numpy()

    def _batch(self, buffer, batch, filled, xs, counts, sigma, seed, input_ids, phase, block_start, blocks,
               num_classes):
        """Draw, shift and count one packed batch of (input, block, length) pairs."""
        offset = 0
        for i, j, length in batch:
            fill_block(buffer[offset : offset + length], self.generator, seed, int(input_ids[i]), phase,
                       block_start + j)
            offset += length
        samples = buffer[:filled]
        samples.mul_(sigma)
        offset, run_start = 0, 0
        for k, (i, _, length) in enumerate(batch):
            if k + 1 == len(batch) or batch[k + 1][0] != i:
                samples[run_start : offset + length].add_(xs[i])
                run_start = offset + length
            offset += length
        first = batch[0][0] * blocks + batch[0][1]  # the batch's pairs are consecutive from this one
        sizes = torch.tensor([length for _, _, length in batch], device=self.device)
        # each sample's vote index is owner + predicted class, owner = its pair's place × slots
        slots = num_classes + 1  # the classes and one slot for samples with non-finite logits
        owner = torch.repeat_interleave(torch.arange(0, len(batch) * slots, slots, device=self.device),
                                        sizes, output_size=filled)
        self._flush(buffer, owner, filled, first, counts, num_classes)

    def _flush(self, buffer, owner, filled, start_pair, counts, num_classes):
        """One forward pass over the packed batch; votes are added to the pairs it holds.

        A row with any non-finite logit votes for slot ``num_classes``, never for a class (argmax
        would send NaN rows to class 0). ``owner`` is each sample's pair place × (classes + 1).
        """
        try:
            logits = self.logits(buffer[:filled])
        except Exception as exc:
            raise model_error(exc, buffer[:filled].shape) from None
        slots = num_classes + 1
        votes = torch.where(torch.isfinite(logits).all(dim=1), logits.argmax(dim=1), num_classes).add_(owner)
        batch_counts = torch.bincount(votes, minlength=1)
        offset = start_pair * slots
        counts[offset : offset + batch_counts.numel()] += batch_counts

    @torch.inference_mode()
    def forward_throughput(self, x: np.ndarray, batch_size: int, repeats: int) -> tuple[int, float]:
        """Raw forward samples and seconds on a fixed batch: the ceiling certification is held to."""
        import time

        point = torch.tensor(np.asarray(x[:1]), dtype=torch.float32, device=self.device)
        batch = point + torch.randn((batch_size, *point.shape[1:]), device=self.device)
        self.logits(batch).argmax(dim=1)
        self._sync()
        started = time.perf_counter()
        for _ in range(repeats):
            self.logits(batch).argmax(dim=1)
        self._sync()
        return batch_size * repeats, time.perf_counter() - started

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


_SCRIPT_ERROR = re.compile(r"^(?:[\w]+\.)*(\w+): (.*)$")


def model_error(exc: BaseException, shape) -> ModelError:
    """One line naming what the model raised and on which batch shape.

    A TorchScript model's ``raise ValueError("…")`` arrives as ``torch.jit.Error`` whose message
    is an interpreter traceback ending in ``builtins.ValueError: …``; that last line is the error.
    """
    name, lines = type(exc).__name__, [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else ""
    if isinstance(exc, torch.jit.Error) and lines:
        match = _SCRIPT_ERROR.match(lines[-1])
        if match:
            name, message = match.groups()
    text = f"the model raised {name} on a batch of shape {list(shape)}"
    return ModelError(f"{text}: {message[:300]}" if message else text)
