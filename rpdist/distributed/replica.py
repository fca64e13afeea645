"""The ``ModelReplica`` Ray actor: one model copy per process, returning only integer counts."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import ray
import torch

from rpdist.distributed.allocator import keep_freed_memory
from rpdist.models.refs import ModelRef
from rpdist.smoothing.votes import VoteCounter


@ray.remote(max_restarts=4, max_task_retries=4)
class ModelReplica:
    """Loads the model once and serves :meth:`VoteCounter.count` calls for the driver.

    Restarts are safe: a retried unit draws the same counter-based noise and returns the same counts.
    """

    def __init__(self, model_ref: ModelRef, device: str | None, *payload: bytes):
        torch.set_num_threads(1)
        if payload:  # the model's bytes, sent in pieces (see ReplicaPool)
            model_ref = dataclasses.replace(model_ref, payload=b"".join(payload))
        self.counter = VoteCounter(model_ref, device)
        self.units = 0  # count calls served: shows how work spread over the replicas
        self.kept_memory = self.counter.device.type == "cpu" and keep_freed_memory()

    def info(self) -> dict:
        return {"pid": os.getpid(), "device": str(self.counter.device), "threads": torch.get_num_threads(),
                "node": ray.get_runtime_context().get_node_id(), "units": self.units,
                "keeps_freed_memory": self.kept_memory}

    def count(self, x: np.ndarray, input_ids: np.ndarray, params: dict) -> np.ndarray:
        self.units += 1
        return self.counter.count(x, input_ids, **params)

    def forward_throughput(self, x: np.ndarray, batch_size: int, repeats: int) -> tuple[int, float]:
        return self.counter.forward_throughput(x, batch_size, repeats)
