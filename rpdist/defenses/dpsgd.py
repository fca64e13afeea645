"""DP-SGD training of the target with Opacus (the baseline defense of the RP paper)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rpdist.models import architectures
from rpdist.models.zoo import epoch_meter


def train_dpsgd(rec: dict, X: np.ndarray, y: np.ndarray, description: str = "training with DP-SGD",
                progress: bool = False) -> dict[str, torch.Tensor]:
    """Train ``rec['arch']`` with per-sample clipping at ``rec['clip']`` and Gaussian noise calibrated
    by Opacus' RDP accountant to (ε, δ) over ``rec['epochs']`` epochs of Poisson-sampled batches.

    ``rec['epsilon'] is None`` is the clip-only control (noise multiplier 0): it separates the cost
    of clipping from the cost of the noise. Seeds are fixed through a forked global RNG, which
    Opacus' (non-secure) sampler and noise draw from.
    """
    import warnings

    from opacus import PrivacyEngine

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(rec["seed"])
        model = architectures.build(rec["arch"], **rec["arch_kwargs"])
        opt = torch.optim.Adam(model.parameters(), lr=rec["lr"])
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt), batch_size=rec["batch_size"],
                                             shuffle=True, generator=torch.Generator().manual_seed(rec["seed"]))
        engine = PrivacyEngine(accountant="rdp")
        if rec["epsilon"] is None:
            model, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                                     noise_multiplier=0.0, max_grad_norm=rec["clip"])
        else:
            model, opt, loader = engine.make_private_with_epsilon(
                module=model, optimizer=opt, data_loader=loader, target_epsilon=rec["epsilon"],
                target_delta=rec["delta"], epochs=rec["epochs"], max_grad_norm=rec["clip"])
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        with epoch_meter(rec["epochs"], description, progress) as meter:
            for _ in range(rec["epochs"]):
                for inputs, labels in loader:
                    if len(inputs) == 0:
                        continue
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model(inputs), labels).backward()
                    opt.step()
                meter.advance(1)
        spent = None if rec["epsilon"] is None else float(engine.get_epsilon(rec["delta"]))
    model.eval()
    state = {k.removeprefix("_module."): v.detach().clone() for k, v in model.state_dict().items()}
    if spent is not None and spent > rec["epsilon"] * 1.01:
        raise RuntimeError(f"DP-SGD spent ε={spent:.3f} > target {rec['epsilon']}")
    return state
