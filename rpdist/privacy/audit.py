"""The empirical distinguishing audit: does the deployed release keep x and a close x' apart as claimed?

For each audited input x and each N the audit
1. certifies x (n0 selection and N estimation samples) for the class A, its certified radius R and
   a two-sided Clopper–Pearson interval on p_A(x): the certificate the bound of
   :mod:`rpdist.privacy.bounds` starts from;
2. picks a partner direction that lowers p_A fast: ``gradient``, the mean over noise draws of the
   gradient of the base model's logit margin of A (for a linear model exactly the normal of its
   boundary, the fastest direction), or ``nearest``, towards the nearest training point labelled
   other than A;
3. places partners x' at the given distances (in units of σ, and as fractions of x's certified
   radius) and draws T observations of k releases at x and at every x' through the engine: each
   release is a job input of its own, keyed by (input, point, N, release index), so its noise —
   and the whole audit — is reproducible and independent of the number of workers;
4. scores the distinguisher of :mod:`rpdist.privacy.distinguish` (fitted on half the trials,
   scored on the rest) against the sound per-input bound and the paper's α/2.

One engine job per N draws every release at that N: with the ``certify`` release it is a CERTIFY
job (n0 selection and N estimation samples per release), otherwise a PREDICT job. PREDICT and the
majority are computed from the same N samples (the majority is the top class, PREDICT adds the
test), so auditing all three releases costs one job, and the audit costs the releases it draws
plus one certificate per input.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import struct
import time

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from rpdist.errors import InputError
from rpdist.specs import Alpha, Count, OutRoot, Seed, Sigma, cli_option, input_error, one_of
from rpdist.privacy.bounds import Certificate, advantage_bound
from rpdist.privacy.distinguish import fit_and_score
from rpdist.privacy.mechanisms import Certify, Majority, Predict, mechanism
from rpdist.smoothing import stats
from rpdist.smoothing.noise import DEFAULT_BLOCK, Phase

RELEASES = (Predict.name, Majority.name, Certify.name)
DIRECTIONS = ("gradient", "nearest")
SELECTIONS = ("first", "boundary")
GRADIENT_DRAWS = 256  # noise draws averaged for the direction; cheap next to the releases
X_POINT = "x"


class AuditSpec(BaseModel):
    """Everything a user chooses for one distinguishing audit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    sigma: Sigma
    n: tuple[int, ...] = (1000,)
    n0: Count = 100
    alpha: Alpha = 0.001
    releases: tuple[str, ...] = (Predict.name,)
    distances: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)  # in units of σ
    radius_fractions: tuple[float, ...] = (0.5, 1.0)  # of x's certified radius
    trials: int = 1000
    repeat: Count = 1
    direction: str = DIRECTIONS[0]
    select: str = SELECTIONS[0]  # boundary: the LIMIT certified inputs of the split with the smallest radius
    level: float = 0.95
    model: str | None = None
    arch: str | None = None
    train_sigma: float | None = None
    seed: Seed = 0
    split: str = "test"
    label_column: str = "label"
    limit: Count | None = 20
    batch_size: Count | None = None
    noise_block: Count | None = None  # default: the engine's
    workers: Count | None = None
    address: str | None = None
    device: str | None = None
    out: OutRoot = "results"
    run_id: str | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if not v:
            raise ValueError("give at least one N")
        return tuple(sorted({stats.check_count(n, "n") for n in v}))

    @field_validator("trials")
    @classmethod
    def _trials(cls, v):
        if v < 2:
            raise ValueError(f"trials must be >= 2 (half fit the distinguisher, half score it), got {v}")
        return v

    @field_validator("distances", "radius_fractions")
    @classmethod
    def _distances(cls, v, info):
        for d in v:
            if not (math.isfinite(d) and d >= 0):
                raise ValueError(f"{info.field_name.replace('_', ' ')} must be finite and >= 0, got {d!r}")
        return tuple(sorted(set(v)))

    @field_validator("releases")
    @classmethod
    def _releases(cls, v):
        chosen = {one_of(release, RELEASES, "release") for release in v}
        if not chosen:
            raise ValueError("give at least one release")
        return tuple(r for r in RELEASES if r in chosen)

    @field_validator("direction", "select")
    @classmethod
    def _choice(cls, v, info):
        choices, what = {"direction": (DIRECTIONS, "direction"), "select": (SELECTIONS, "selection")}[info.field_name]
        return one_of(v, choices, what)

    @field_validator("level")
    @classmethod
    def _level(cls, v):
        if not 0 < v < 1:
            raise ValueError(f"level must lie in (0, 1), got {v!r}")
        return v

    @property
    def block(self) -> int:
        return self.noise_block or DEFAULT_BLOCK

    def check(self) -> AuditSpec:
        """What needs several fields: every N is feasible for every release, and a prefix of the largest."""
        for n in self.n:
            if Certify.name in self.releases:
                stats.check_feasible(n, self.alpha)
            if Predict.name in self.releases:
                stats.check_predict_feasible(n, self.alpha)
            stats.check_feasible(n, self.alpha)  # the certificate at x
        if not self.distances and not self.radius_fractions:
            raise InputError("give at least one distance or radius fraction")
        return self


def audit_spec(**options) -> AuditSpec:
    """Validate options into a spec; any problem is one line naming the option."""
    try:
        return AuditSpec(**options).check()
    except ValidationError as exc:
        raise input_error(exc, AuditSpec, option=cli_option) from None


def release_key(input_id: int, point: str, n: int, release: int) -> int:
    """The engine input id of one release: a 63-bit hash of (input, point, N, release index).

    Keyed by the point's name (``x``, ``s0.5`` = 0.5σ, ``r1`` = the radius), not its position in a
    list, so adding trials, distances, Ns or inputs never changes an existing release's noise.
    """
    digest = hashlib.blake2b(struct.pack("<q", input_id) + point.encode() + struct.pack("<2q", n, release),
                             digest_size=8, person=b"rpdist-audit").digest()
    return int.from_bytes(digest, "little") >> 1


def partner_points(spec: AuditSpec, radius: float) -> list[tuple[str, float, float | None]]:
    """(name, distance, fraction of the radius or None) of x's partners; radius fractions need R > 0."""
    points = [(f"s{d:g}", d * spec.sigma, None) for d in spec.distances]
    points += [(f"r{f:g}", f * radius, f) for f in spec.radius_fractions if radius > 0]
    return points


def directions(model, X: np.ndarray, classes: np.ndarray, how: str, seed: int, sigma: float,
               train: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Unit directions [inputs, features…] along which p_A should fall fastest (see the module doc)."""
    import torch

    X = np.asarray(X, dtype=np.float32)
    out = np.zeros_like(X, dtype=np.float64)
    gen = torch.Generator().manual_seed(seed)
    for i, (x, a) in enumerate(zip(X, classes)):
        if how == "gradient":
            z = torch.tensor(np.repeat(x[None], GRADIENT_DRAWS, axis=0), requires_grad=True)
            noisy = z + sigma * torch.randn(z.shape, generator=gen)
            logits = model(noisy)
            others = logits.clone()
            others[:, int(a)] = -torch.inf
            (logits[:, int(a)] - others.max(dim=1).values).sum().backward()
            step = -z.grad.sum(dim=0).double().numpy()
        else:
            Xt, yt = train
            other = Xt[yt != a].reshape(int((yt != a).sum()), -1)
            gaps = other - x.reshape(1, -1)
            step = gaps[np.argmin((gaps ** 2).sum(axis=1))].reshape(x.shape)
        norm = np.linalg.norm(step)
        if not np.isfinite(norm) or norm == 0:
            raise InputError(f"no {how} direction at input row {i}: the model's margin is flat there")
        out[i] = step / norm
    return out


def release_outputs(spec: AuditSpec, n: int, counts: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """The output of every release kind (−1 = abstain) from one chunk's counts {phase: [releases, classes + 1]}.

    The last slot counts samples with non-finite logits, which make a release abstain, as in
    ``rpdist predict``. PREDICT and the majority read the same N samples.
    """
    estimation = counts.get(Phase.ESTIMATION, counts.get(Phase.PREDICT))
    votes, bad = estimation[:, :-1], estimation[:, -1] > 0
    selection = counts.get(Phase.SELECTION)
    if selection is not None:
        bad = bad | (selection[:, -1] > 0)
    top, _, _, _, predicted = stats.predict_decision(votes, spec.alpha)
    out = {}
    for release in spec.releases:
        if release == Predict.name:
            label = predicted
        elif release == Majority.name:
            label = top
        else:
            label = stats.certify_decision(selection[:, :-1], votes, n, spec.alpha, spec.sigma)[4]
        out[release] = np.where(bad, -1, label).astype(np.int64)
    return out


def trial_table(spec: AuditSpec, n: int, layout: pd.DataFrame, counts: dict[int, np.ndarray]) -> pa.Table:
    """Per-release outputs of one engine chunk (``layout``: its rows), one row per release × kind."""
    frames = [pd.DataFrame({"input_id": layout["input_id"].to_numpy(), "point": layout["point"].to_numpy(),
                            "index": layout["index"].to_numpy(), "release": release, "n": n, "output": output})
              for release, output in release_outputs(spec, n, counts).items()]
    return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)


def score_pairs(spec: AuditSpec, trials: pd.DataFrame, certificates: dict[int, pd.DataFrame],
                num_classes: int) -> pd.DataFrame:
    """One audit row per (input, partner, release, N): the scored distinguisher against the bounds."""
    k, T = spec.repeat, spec.trials
    rows = []
    trials = trials.sort_values(["input_id", "release", "n", "point", "index"])
    for (input_id, release, n), group in trials.groupby(["input_id", "release", "n"], sort=True):
        info = certificates[n].loc[input_id]
        by_point = {p: g["output"].to_numpy().reshape(T, k) for p, g in group.groupby("point")}
        at_x = by_point[X_POINT]
        mech = mechanism(release, n=int(n), alpha=spec.alpha, n0=spec.n0, sigma=spec.sigma)
        cert = Certificate.from_counts(int(info["count_top"]), int(n), spec.alpha)
        a = int(info["top_class"])
        for name, d, fraction in partner_points(spec, float(info["radius"])):
            at_other = by_point[name]
            scored = fit_and_score(at_x, at_other, spec.level)
            bound = advantage_bound(mech, cert, d, spec.sigma, k, num_classes)
            rows.append({
                "input_id": int(input_id), "label": info["label"], "top_class": a, "release": release,
                "certified_release": mech.certified, "n": int(n), "k": k, "trials": T, "point": name,
                "distance": d, "distance_sigma": d / spec.sigma, "radius_fraction": fraction,
                "radius": float(info["radius"]), "pa_lower": float(info["pa_lower"]),
                "label_rate_x": float((at_x == a).mean()), "label_rate_other": float((at_other == a).mean()),
                "abstain_rate_x": float((at_x < 0).mean()), "abstain_rate_other": float((at_other < 0).mean()),
                "empirical_advantage": scored.advantage, "empirical_low": scored.low,
                "empirical_high": scored.high, "correct": scored.correct, "scored": scored.scored,
                "bound": bound.advantage, "bound_route": bound.route,
                "bound_alpha": bound.alpha, "alpha_half": spec.alpha / 2, "sigma": spec.sigma, "alpha": spec.alpha,
            })
    return pd.DataFrame(rows)


def boundary_inputs(spec: AuditSpec, model_ref, engine: dict):
    """The split's ``limit`` inputs with the smallest certified radius > 0 at the largest N (then the
    abstaining ones), chosen on a noise stream of their own (seed + 1), so the certificates the audit
    later uses for its bounds played no part in choosing the inputs."""
    from rpdist.datasets.catalog import load_dataset
    from rpdist.smoothing.job import certify

    data = load_dataset(spec.dataset, split=spec.split, label_column=spec.label_column)
    certs = certify(model_ref, data.X, data.y, sigma=spec.sigma, n0=spec.n0, n=max(spec.n), alpha=spec.alpha,
                    seed=spec.seed + 1, input_ids=data.input_ids, noise_block=spec.block, **engine)
    radius = certs["radius"].to_numpy()
    order = np.lexsort((radius, radius <= 0))  # certified first, smallest radius first
    rows = np.sort(order[:spec.limit or len(order)])
    return dataclasses.replace(data, X=data.X[rows], y=None if data.y is None else data.y[rows],
                               input_ids=data.input_ids[rows])


def release_rows(spec: AuditSpec, X: np.ndarray, input_ids: np.ndarray, certificate: pd.DataFrame,
                 unit: np.ndarray, n: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The engine inputs of the releases at N: (layout [input_id, point, index], points, keys)."""
    per_point = spec.trials * spec.repeat
    layout, points = [], []
    for i, input_id in enumerate(input_ids):
        radius = float(certificate.loc[input_id, "radius"])
        for name, d, _ in [(X_POINT, 0.0, None), *partner_points(spec, radius)]:
            layout.append(pd.DataFrame({"input_id": int(input_id), "point": name, "index": np.arange(per_point)}))
            points.append(np.repeat((X[i] + d * unit[i]).astype(np.float32)[None], per_point, axis=0))
    layout = pd.concat(layout, ignore_index=True)
    keys = np.array([release_key(i, p, n, r) for i, p, r in layout.itertuples(index=False)], dtype=np.int64)
    if len(np.unique(keys)) != len(keys):
        raise InputError("two releases hashed to one key; change --seed")  # ~1 in 10^7 for 10^6 releases
    return layout, np.concatenate(points), keys


def model_choice(spec: AuditSpec):
    """The run spec that decides the audited model: the file given, or the dataset's default model
    (trained at ``train_sigma``, else at the audit's σ)."""
    from rpdist.pipelines.run import RunSpec
    from rpdist.smoothing.job import CERTIFY, SmoothingConfig

    return RunSpec(SmoothingConfig(CERTIFY, spec.sigma, max(spec.n), spec.alpha, spec.n0), spec.dataset,
                   model=spec.model, arch=spec.arch, train_sigma=spec.train_sigma)


def run_audit(spec: AuditSpec, progress: bool = False, on_unit=None):
    """Run (or resume, or return a finished) audit; writes ``audit.parquet``, ``trials.parquet``, a manifest.

    One engine job per N draws that N's releases; chunks are numbered across the jobs in N order,
    so a resumed run skips exactly the chunks it finished.
    """
    from rpdist import analyses
    from rpdist.analyses.audit import AuditAnalysis
    from rpdist.datasets.catalog import load_dataset
    from rpdist.io.manifest import new_manifest
    from rpdist.io.rundir import RunDir
    from rpdist.pipelines.run import default_run_id, engine_identity, resolve_model
    from rpdist.smoothing.job import CERTIFY, PREDICT, SmoothingConfig, SmoothingJob, certify

    spec = spec.check()
    audit = analyses.get(AuditAnalysis.name)
    run_dir = RunDir(spec.out, spec.run_id or default_run_id(audit.name), audit.final_file)
    data = load_dataset(spec.dataset, split=spec.split, label_column=spec.label_column, limit=spec.limit)
    model_ref, model_info = resolve_model(model_choice(spec), data.name, progress)
    engine = dict(batch_size=spec.batch_size, workers=spec.workers, address=spec.address, device=spec.device)
    if spec.select == "boundary":
        data = boundary_inputs(spec, model_ref, engine)
    certifies = Certify.name in spec.releases

    def job(n: int, X=None, keys=None):
        config = SmoothingConfig(CERTIFY if certifies else PREDICT, spec.sigma, n, spec.alpha,
                                 spec.n0 if certifies else None, spec.seed, spec.batch_size, spec.block)
        return SmoothingJob(model_ref, data.X if X is None else X, None, config=config,
                            input_ids=data.input_ids if keys is None else keys, workers=spec.workers,
                            address=spec.address, device=spec.device)

    first = job(min(spec.n))
    identity = {
        "analysis": audit.name,
        "spec": spec.model_dump(mode="json", exclude={"out", "run_id", "workers", "address", "device"}),
        "batch_size": first.plan.batch_size,
        "dataset": {"spec": str(spec.dataset), "split": spec.split, "sha256": data.sha256, "rows": len(data)},
        "model": {**model_info, "sha256": model_ref.sha256, "kind": model_ref.kind},
        "engine": engine_identity(first.pool),
    }
    existing = run_dir.claim(identity, "--run-id")
    if existing is not None and run_dir.complete:
        return audit.outcome(run_dir, existing)
    started = existing["timings"]["started"] if existing else dt.datetime.now(dt.timezone.utc).isoformat()
    manifest = new_manifest(
        audit.name, identity, dataset=identity["dataset"], models={"model": identity["model"]},
        device={"type": first.pool.device, "workers": first.pool.workers, "batch_size": first.plan.batch_size},
        timings={"started": started})
    run_dir.write_manifest(manifest)

    train = None
    if spec.direction == "nearest":
        train_data = load_dataset(spec.dataset, split="train", label_column=spec.label_column)
        train = (train_data.X, train_data.y)
    base = model_ref.load("cpu")
    done, offset, releases, samples, clock = run_dir.finished_chunks(), 0, 0, 0, time.perf_counter()
    certificates = {}
    for n in spec.n:
        certificates[n] = certify(model_ref, data.X, data.y, sigma=spec.sigma, n0=spec.n0, n=n, alpha=spec.alpha,
                                  seed=spec.seed, input_ids=data.input_ids, noise_block=spec.block,
                                  **engine).set_index("input_id")
        unit = directions(base, data.X, certificates[n]["top_class"].to_numpy(), spec.direction, spec.seed,
                          spec.sigma, train)
        layout, X, keys = release_rows(spec, data.X, data.input_ids, certificates[n], unit, n)
        releases_job = job(n, X, keys)
        skip = {c - offset for c in done if offset <= c < offset + releases_job.plan.num_chunks}
        meter = releases_job.meter(skip, enabled=progress)
        for chunk, counts in releases_job.block_counts(skip=skip, meter=meter, on_unit=on_unit):
            rows = slice(*releases_job.plan.chunk_rows(chunk))
            summed = {phase: c.sum(axis=1) for phase, c in counts.items()}
            run_dir.write_chunk(offset + chunk, trial_table(spec, n, layout.iloc[rows], summed))
        offset += releases_job.plan.num_chunks
        releases += len(keys) - sum(len(range(*releases_job.plan.chunk_rows(c))) for c in skip)
        samples += meter.done
    seconds = time.perf_counter() - clock
    parts = [run_dir.store.read_table(p) for p in run_dir.chunk_paths()]
    trials = pa.concat_tables(parts).to_pandas()
    table = score_pairs(spec, trials, certificates, first.num_classes)
    run_dir.write_table(pa.Table.from_pandas(trials, preserve_index=False), "trials.parquet")
    run_dir.write_table(pa.Table.from_pandas(table, preserve_index=False), audit.final_file)
    manifest["status"] = "complete"
    manifest["timings"].update({
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(), "seconds_this_session": seconds,
        "samples_this_session": samples, "releases_this_session": releases,
        "releases_per_second": releases / max(seconds, 1e-9), "resumed_chunks": len(done)})
    manifest["details"] = {"chunks": offset, "summary": audit.summarize(table)}
    run_dir.write_manifest(manifest)
    run_dir.drop_chunks()
    return audit.outcome(run_dir, manifest, len(done))
