"""Model extraction through the release (``rpdist attack extraction``): can a student copy the model?

The Robust Privacy paper scopes RP to attribute- and instance-level leakage and says it does *not*
stop function-level extraction by distillation. This module measures that boundary.

Roles. The dataset's train split is cut once (seeded, :data:`ROLE_SEED`) into a *private* half, on
which the target trains (the dataset's built-in architecture and schedule, or DP-SGD with Opacus),
and a *public* half: the attacker's unlabelled query pool (``--query-source public``), or the
centre of its synthetic queries (``synthetic``: a public input plus Gaussian noise of half each
feature's spread). The test split is held out for scoring.

Per defense setting and seed, the attacker queries the release at the first Q pool inputs (one
seeded order per seed; budgets are prefixes, so the largest budget's queries serve them all),
drops the abstentions (counted, never used as labels), and trains a student of a stated
architecture on the rest. Scored on the test split:
- ``fidelity_release``: agreement with the release where it answered;
- ``fidelity_target``: agreement with the undefended target (the same weights without the
  release's noise; for DP-SGD, the target trained without DP) — the function the attacker wants;
- ``student_accuracy``; and ``utility_accuracy``, the release's own accuracy (abstain = wrong).
RP releases go through :func:`rpdist.predict` / :func:`rpdist.certify` on the engine's replicas,
with a fresh query id per query and seed, like every other attack.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from rpdist.errors import InputError
from rpdist.io.manifest import dpsgd_name
from rpdist.privacy.mechanisms import Certify, Majority, Predict
from rpdist.specs import Alpha, Count, OutRoot, Sigma, cli_option, input_error, one_of

DEFENSES = ("none", "rp", "dpsgd", "rr")
SOURCES = ("public", "synthetic")
STUDENTS = ("mlp", "linear")
RELEASES = (Predict.name, Majority.name, Certify.name)
CHOICES = {"defense": (DEFENSES, "defense"), "query_source": (SOURCES, "query source"),
           "student": (STUDENTS, "student architecture")}  # spec key: (its values, what the user calls it)
ROLE_SEED = 4321  # the private/public cut of the train split, independent of the train/test split
SYNTHETIC_SCALE = 0.5  # synthetic queries: public input + N(0, (0.5 · feature std)²)
STUDENT_STEPS = 1000  # Adam steps per student, whatever the budget: small budgets are not under-trained
TEST_ID_BASE = 1 << 40  # query ids of the held-out scoring, disjoint from the attack's


class ExtractionSpec(BaseModel):
    """Everything a user chooses for one extraction benchmark."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "insurance"
    defense: str = "none"
    sigmas: tuple[Sigma, ...] = (0.5,)
    ns: tuple[Count, ...] = (1000,)
    releases: tuple[str, ...] = (Predict.name,)
    epsilons: tuple[float, ...] | None = None
    query_budgets: tuple[int, ...] = (30, 100, 300)
    query_source: str = "public"
    student: str = "mlp"
    seeds: Count = 5
    alpha: Alpha = 0.001
    train_sigma: float = 0.25
    batch_size: Count | None = None
    workers: Count | None = None
    address: str | None = None
    device: str | None = None
    out: OutRoot = "results"
    run_id: str | None = None

    @field_validator("defense", "query_source", "student")
    @classmethod
    def _choice(cls, v, info):
        return one_of(v, *CHOICES[info.field_name])

    @field_validator("releases")
    @classmethod
    def _releases(cls, v):
        return tuple(one_of(r, RELEASES, "release") for r in v)

    @field_validator("query_budgets")
    @classmethod
    def _budgets(cls, v):
        if not v:
            raise ValueError("give at least one query budget")
        for q in v:
            if q < 1:
                raise ValueError(f"a query budget must be >= 1, got {q}")
        return tuple(sorted(set(v)))

    @field_validator("epsilons")
    @classmethod
    def _epsilons(cls, v):
        for e in v or ():
            if not (e > 0) or math.isnan(e):
                raise ValueError(f"epsilon must be > 0, got {e!r}")
        return v



def extraction_spec(**options) -> ExtractionSpec:
    """Validate options into a spec; any problem is one line naming the option."""
    try:
        return ExtractionSpec(**options)
    except ValidationError as exc:
        raise input_error(exc, ExtractionSpec, option=cli_option) from None


def settings(spec: ExtractionSpec) -> list[dict]:
    """The defense settings to attack: one per (σ, N, release), ε, or the undefended release."""
    nan = float("nan")
    if spec.defense == "rp":
        return [dict(sigma=s, n=n, epsilon=nan, release=r) for s in spec.sigmas for n in spec.ns
                for r in spec.releases]
    if spec.defense in ("dpsgd", "rr"):
        return [dict(sigma=nan, n=0, epsilon=float(e), release="label")
                for e in spec.epsilons or ((1.0, 3.0, 8.0) if spec.defense == "dpsgd" else (1.0, 3.0, 5.0))]
    return [dict(sigma=nan, n=0, epsilon=nan, release="label")]


def role_rows(dataset: str) -> dict[str, np.ndarray]:
    """Row positions (into the train split) of the private and public halves."""
    from rpdist.datasets.catalog import load_dataset

    n = len(load_dataset(dataset, split="train"))
    order = np.random.default_rng(ROLE_SEED).permutation(n)
    return {"private": np.sort(order[: n // 2]), "public": np.sort(order[n // 2:])}


def target_model(dataset: str, train_sigma: float, epsilon: float | None = None, dpsgd: bool = False):
    """The target trained on the private half (with DP-SGD at ``epsilon`` when ``dpsgd``), cached by recipe."""
    from rpdist.datasets.catalog import load_dataset
    from rpdist.defenses.dpsgd import train_dpsgd
    from rpdist.models import architectures, zoo
    from rpdist.models.refs import ModelRef

    if dataset not in zoo.DEFAULTS:
        raise InputError(f"extraction needs a built-in dataset with a default model ({', '.join(zoo.DEFAULTS)}), "
                         f"got {dataset!r}")
    rec = {**zoo.recipe(dataset, train_sigma, 0), "role": "extraction-target", "data": "private half",
           "role_seed": ROLE_SEED}
    if dpsgd:
        rec.update(epsilon=epsilon, delta=1e-5, clip=1.0, train_sigma=0.0)
    train = load_dataset(dataset, split="train")
    rows = role_rows(dataset)["private"]
    fit = (lambda: train_dpsgd(rec, train.X[rows], train.y[rows])) if dpsgd else (
        lambda: zoo.fit_classifier(rec, train.X[rows], train.y[rows]))
    path = zoo.cache_dir() / f"extraction-{dataset}-{zoo._recipe_key(rec)}.pt"
    state = zoo.cached_state(path, lambda: architectures.build(rec["arch"], **rec["arch_kwargs"]), fit)
    return ModelRef.from_state_dict(rec["arch"], rec["arch_kwargs"], state)


def target_models(spec: ExtractionSpec) -> dict:
    """The targets a run attacks, by the name its manifest records: the undefended one and, for ``dpsgd``,
    one per ε (trained and cached on first use)."""
    models = {"target": target_model(spec.dataset, spec.train_sigma)}
    if spec.defense == "dpsgd":
        for setting in settings(spec):
            models[dpsgd_name(setting["epsilon"])] = target_model(spec.dataset, spec.train_sigma,
                                                                  setting["epsilon"], dpsgd=True)
    return models


def query_pool(spec: ExtractionSpec, seed: int) -> np.ndarray:
    """The attacker's queries in the order it spends them: the largest budget's worth."""
    from rpdist.datasets.catalog import load_dataset

    train = load_dataset(spec.dataset, split="train")
    public = train.X[role_rows(spec.dataset)["public"]]
    need = max(spec.query_budgets)
    rng = np.random.default_rng([ROLE_SEED, seed])
    if spec.query_source == "public":
        if need > len(public):
            raise InputError(f"query budget {need} exceeds the public pool of {len(public)} inputs; "
                             "use --query-source synthetic for more")
        return public[rng.permutation(len(public))[:need]]
    centres = public[rng.integers(0, len(public), size=need)]
    spread = SYNTHETIC_SCALE * public.std(axis=0, keepdims=True)
    return (centres + spread * rng.standard_normal(centres.shape)).astype(np.float32)


def release_labels(spec: ExtractionSpec, setting: dict, ref, X: np.ndarray, ids: np.ndarray,
                   seed: int, answers: dict | None = None) -> tuple[np.ndarray, int]:
    """The released labels (−1 = abstain) and the forward passes they cost (each release's own, even
    when the majority reuses the PREDICT job that drew the same noise). ``answers`` keeps a run's
    engine tables, so PREDICT and the majority read one job's counts."""
    from rpdist.defenses.releases import CERTIFY_N0, LabelRelease, RandomizedResponse
    from rpdist.smoothing.job import certify, predict

    engine = dict(batch_size=spec.batch_size, workers=spec.workers, address=spec.address, device=spec.device)
    if spec.defense == "rp":
        call = certify if setting["release"] == Certify.name else predict
        key = (call.__name__, ref.sha256, setting["sigma"], setting["n"], spec.alpha, seed, ids.tobytes())
        answers = {} if answers is None else answers
        selection = dict(n0=CERTIFY_N0) if call is certify else {}
        if key not in answers:
            answers[key] = call(ref, X, sigma=setting["sigma"], n=setting["n"], alpha=spec.alpha, seed=seed,
                                  input_ids=ids, **selection, **engine)
        df = answers[key]
        column = "top_class" if setting["release"] == Majority.name else "prediction"
        samples = setting["n"] + selection.get("n0", 0)
        return df[column].to_numpy(dtype=np.int64), len(X) * samples
    if spec.defense == "rr":
        release = RandomizedResponse(ref, setting["epsilon"], _classes(ref, X), seed=seed)
    else:
        release = LabelRelease(ref)
    return release(X, ids), len(X)


def _classes(ref, X: np.ndarray) -> int:
    import torch

    with torch.inference_mode():
        return int(ref.load("cpu")(torch.from_numpy(X[:1])).shape[1])


def training_set(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The student's training data: abstentions (−1) dropped, never used as a label; and how many."""
    keep = labels >= 0
    return X[keep], labels[keep], int((~keep).sum())


@contextlib.contextmanager
def _one_thread():
    """Torch on one thread for the block, then the caller's setting again. A student's steps are too
    small to split, and spinning OpenMP threads on a busy machine made them 8x slower (31 s against
    3.9 s for 1,000 steps on mnist5k at load average 3); one thread also makes the weights independent
    of the core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_student(arch: str, X: np.ndarray, y: np.ndarray, classes: int, seed: int):
    """A fresh student fitted with Adam (cross-entropy, :data:`STUDENT_STEPS` minibatch steps), on one
    thread, so its weights do not depend on the machine's core count."""
    import torch
    from torch import nn

    from rpdist.models import architectures

    features = int(np.prod(X.shape[1:]))
    kwargs = {"in_features": features, "num_classes": classes}
    if arch == "mlp":
        kwargs["hidden"] = (128, 128)
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = architectures.build(arch, **kwargs)
        if len(y) == 0:
            return model.eval()
        gen = torch.Generator().manual_seed(seed)
        Xt, yt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(y)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(STUDENT_STEPS):
            index = torch.randint(0, len(yt), (min(128, len(yt)),), generator=gen)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xt[index]), yt[index]).backward()
            opt.step()
    return model.eval()


def _predict(model, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))).argmax(1).numpy()


def attack_setting(spec: ExtractionSpec, setting: dict, ref, plain, test, seed: int,
                   queries: np.ndarray, answers: dict | None = None) -> list[dict]:
    """Rows of one (defense setting, seed): one per query budget. ``queries`` in the order they are
    spent (:func:`query_pool`); ``plain`` is the undefended target, loaded; ``answers`` as for
    :func:`release_labels`."""
    X_test, y_test = test
    ids = np.arange(len(queries), dtype=np.int64) + seed * len(queries)
    labels, passes = release_labels(spec, setting, ref, queries, ids, seed, answers)
    test_ids = TEST_ID_BASE + seed * len(X_test) + np.arange(len(X_test), dtype=np.int64)
    released_test, _ = release_labels(spec, setting, ref, X_test, test_ids, seed, answers)
    answered = released_test >= 0
    target_test = _predict(plain, X_test)
    classes = _classes(ref, X_test)
    rows = []
    for budget in spec.query_budgets:
        X_train, y_train, abstained = training_set(queries[:budget], labels[:budget])
        student = _predict(train_student(spec.student, X_train, y_train, classes, seed), X_test)
        rows.append({
            **setting, "defense": spec.defense, "certified_release": spec.defense == "rp"
            and setting["release"] != Majority.name, "query_source": spec.query_source, "student": spec.student,
            "budget": budget, "seed": seed, "queries": budget, "abstained": abstained,
            "forward_passes": passes * budget // len(queries),
            "fidelity_release": float((student == released_test)[answered].mean()) if answered.any() else float("nan"),
            "fidelity_target": float((student == target_test).mean()),
            "student_accuracy": float((student == y_test).mean()),
            "utility_accuracy": float((released_test == y_test).mean()),
        })
    return rows


def run_extraction(spec: ExtractionSpec, progress: bool = False):
    """Attack every defense setting with every seed; write ``extraction.parquet`` and a manifest."""
    from rpdist import analyses
    from rpdist.analyses.base import Outcome
    from rpdist.analyses.extraction import ExtractionAnalysis, setting_label
    from rpdist.datasets.catalog import load_dataset
    from rpdist.io.manifest import new_manifest
    from rpdist.io.rundir import RunDir
    from rpdist.pipelines.run import default_run_id

    analysis = analyses.get(ExtractionAnalysis.name)
    configs = settings(spec)
    query_pool(spec, 0)  # refuses a budget beyond the pool before anything is trained or written
    targets = target_models(spec)
    plain = targets["target"]
    run_dir = RunDir(spec.out, spec.run_id or default_run_id(analysis.name), analysis.final_file)
    config = spec.model_dump(mode="json", exclude={"out", "run_id", "workers", "address", "device"})
    run_dir.claim(config, "--run-id")
    test = load_dataset(spec.dataset, split="test")
    answers: dict = {}  # engine tables of this run, shared by the releases that read the same counts
    started = time.perf_counter()
    rows = []
    for setting in configs:
        ref = targets[dpsgd_name(setting["epsilon"])] if spec.defense == "dpsgd" else plain
        for seed in range(spec.seeds):
            rows += attack_setting(spec, setting, ref, plain.load("cpu"), (test.X, test.y), seed,
                                   query_pool(spec, seed), answers)
        if progress:
            done = pd.DataFrame(rows[-spec.seeds * len(spec.query_budgets):])
            top = done[done["budget"] == max(spec.query_budgets)]
            label = setting_label({**setting, "defense": spec.defense, "certified_release": done["certified_release"].iloc[0]})
            print(f"  {label}: fidelity to target {top['fidelity_target'].mean():.3f} at "
                  f"{max(spec.query_budgets)} queries, utility {top['utility_accuracy'].mean():.1%}")
    table = pd.DataFrame(rows)
    run_dir.write_table(pa.Table.from_pandas(table, preserve_index=False), analysis.final_file)
    summary = analysis.summarize(table)
    manifest = new_manifest(analysis.name, config, status="complete",
                            models={name: {"sha256": ref.sha256} for name, ref in targets.items()},
                            dataset={"spec": spec.dataset, "sha256": test.sha256},
                            timings={"seconds": time.perf_counter() - started,
                                     "finished": dt.datetime.now(dt.timezone.utc).isoformat()},
                            details={"summary": summary, "pool": spec.query_source})
    run_dir.write_manifest(manifest)
    reader = lambda columns=None: run_dir.read_final(columns=columns).to_pandas()  # noqa: E731
    return Outcome(analysis.name, run_dir.path, manifest, summary, reader=reader)
