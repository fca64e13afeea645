"""Vote counting on one device: the inner loop of every Monte Carlo estimate in rpdist.

Many (input, noise block) pairs are packed into each forward batch so that small models still
fill the device; predictions are counted with one ``bincount`` per batch, on the device, and only
the integer count matrix leaves it. This class knows nothing of Ray, so it is tested directly.
"""

from __future__ import annotations

import numpy as np
import torch

from rpdist.models.refs import ModelRef
from rpdist.smoothing.noise import block_lengths, fill_block


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

        Returns int64 [len(x), block_stop - block_start, num_classes].
        """
        xs = torch.tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.device)
        lengths = block_lengths(n, block_size, block_start, block_stop)
        pairs = [(i, j) for i in range(len(xs)) for j in range(len(lengths))]
        capacity = max(batch_size, max(lengths))
        shape = tuple(xs.shape[1:])
        buffer = torch.empty((capacity, *shape), device=self.device)
        owner = torch.empty(capacity, dtype=torch.int64, device=self.device)
        counts = torch.zeros(len(pairs) * num_classes, dtype=torch.int64, device=self.device)

        start_pair, filled = 0, 0
        for p, (i, j) in enumerate(pairs):
            length = lengths[j]
            if filled + length > capacity:
                self._flush(buffer, owner, filled, start_pair, counts, num_classes)
                start_pair, filled = p, 0
            piece = buffer[filled : filled + length]
            fill_block(piece, self.generator, seed, int(input_ids[i]), phase, block_start + j)
            piece.mul_(sigma).add_(xs[i])
            owner[filled : filled + length] = p - start_pair
            filled += length
        if filled:
            self._flush(buffer, owner, filled, start_pair, counts, num_classes)
        return counts.view(len(xs), len(lengths), num_classes).cpu().numpy()

    def _flush(self, buffer, owner, filled, start_pair, counts, num_classes):
        """One forward pass over the packed batch; votes are added to the pairs it holds."""
        logits = self.model(buffer[:filled])
        votes = owner[:filled] * num_classes + logits.argmax(dim=1)
        batch_counts = torch.bincount(votes, minlength=1)
        offset = start_pair * num_classes
        counts[offset : offset + batch_counts.numel()] += batch_counts

    @torch.inference_mode()
    def forward_throughput(self, x: np.ndarray, batch_size: int, repeats: int) -> tuple[int, float]:
        """Raw forward samples and seconds on a fixed batch: the ceiling certification is held to."""
        import time

        point = torch.tensor(np.asarray(x[:1]), dtype=torch.float32, device=self.device)
        batch = point + torch.randn((batch_size, *point.shape[1:]), device=self.device)
        self.model(batch).argmax(dim=1)
        self._sync()
        started = time.perf_counter()
        for _ in range(repeats):
            self.model(batch).argmax(dim=1)
        self._sync()
        return batch_size * repeats, time.perf_counter() - started

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
