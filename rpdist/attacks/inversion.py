"""``rpdist attack inversion`` as a function: defenses × target classes × restarts of BREP-MI.

Writes ``OUT/RUN_ID/attack.parquet`` (one row per defense config, target class and restart), a
PNG grid of the reconstructions and a manifest. Every target class is attacked by a Ray task of
its own, and saved when it finishes (:mod:`rpdist.attacks.parts`), so a stopped run resumes. Queries
to smoothed targets go through :func:`rpdist.predict` on the replicas the driver started (the tasks
hold handles to them), so a round's sphere points × N samples share forward batches there.

Baselines without a certificate: ``abstain`` answers with the undefended label or abstains at random at
the rate RP's PREDICT release abstains on the test split at the same (σ, N, noise); ``noise`` answers
with one forward pass on Gaussian-noised input (N = 1) on the same replicas.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator, Field, model_validator

from rpdist.attacks import roles
from rpdist.attacks.brep import ABSTAIN_AWARE, DISJOINT, EXACT, PLAIN, PRIORS, PUBLIC, ULP, BrepAttack, BrepConfig, nudge_name, run_lockstep
from rpdist.defenses.releases import (ABSTAIN, FRESH, KEYED, MAJORITY, PREDICT, SMOOTHED_RELEASES, LabelRelease,
                                      NoisyInputRelease,
                                      RandomAbstention, RandomizedResponse, SmoothedRelease, KEY_ENV,
                                      KEY_GRID_SIGMAS, noise_key, random_seed, stored_key)
from rpdist.attacks.parts import AttackParts
from rpdist.analyses import REGISTRY
from rpdist.analyses.attack import RECONSTRUCTIONS, AttackAnalysis, release_name
from rpdist.analyses.base import Outcome
from rpdist.defenses import DEFENSES
from rpdist.errors import InputError
from rpdist.io.manifest import dpsgd_name, new_manifest, recorded_models
from rpdist.io.rundir import RunDir
from rpdist.specs import Alpha, Count, Must, OutRoot, Positive, Seed, Sigma, spec

if TYPE_CHECKING:
    from rpdist.models.refs import ModelRef

ATTACK = REGISTRY[AttackAnalysis.name]
ELSEWHERE = "or start a new run elsewhere (another --run-id; for a sweep, another --sweep-id or --out)"  # a refused resume's way out
CLIP_ONLY = float("inf")  # the epsilon of the DP-SGD clip-only control (no noise: no privacy)
DEFAULT_SIGMAS, DEFAULT_NS = [0.1, 0.25, 0.5], [200]


def _distinct(values: list | None) -> list | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError("lists a value twice")
    return values


@spec
class InversionSpec:
    """Everything a user chooses for one attack benchmark; validated when built."""

    dataset: Annotated[Literal[roles.DATASETS], Must(f"must be one of {', '.join(roles.DATASETS)}",
                                                     "--dataset")] = roles.DATASET
    attack: Annotated[Literal["brep"], Must("must be brep, the one attack available", "--attack")] = "brep"
    defense: Annotated[Literal[DEFENSES], Must(f"must be one of {', '.join(DEFENSES)}", "--defense")] = "none"
    # rp, abstain: None = DEFAULT_SIGMAS × DEFAULT_NS; noise needs σ given and has N = 1
    sigmas: Annotated[list[Sigma] | None, Must(name="--sigma")] = None
    ns: Annotated[list[Count] | None, Must(name="--n")] = None
    # dpsgd, rr: None = the defense's default grid; inf = DP-SGD clip-only (no noise)
    epsilons: Annotated[list[Positive] | None, Must(name="--epsilon")] = None
    releases: Annotated[list[Literal[SMOOTHED_RELEASES]], Must(f"must be one of {', '.join(SMOOTHED_RELEASES)}",
                                                               "--release")] = \
        field(default_factory=lambda: [MAJORITY])
    repeats: Annotated[list[Count], Must(name="--repeat")] = field(default_factory=lambda: [1])
    noises: Annotated[list[Literal[FRESH, KEYED]], Must(f"must be {FRESH} or {KEYED}", "--noise")] = \
        field(default_factory=lambda: [FRESH])
    # repeated queries moved by δ (0, ulp or a multiple of σ) against keyed noise; see rpdist.attacks.brep
    nudges: Annotated[list, Must(name="--nudge")] = field(default_factory=lambda: [EXACT])
    attackers: Annotated[list[Literal[PLAIN, ABSTAIN_AWARE]], AfterValidator(_distinct),
                         Must(f"must be {PLAIN} or {ABSTAIN_AWARE}", "--attacker")] = \
        field(default_factory=lambda: [PLAIN])
    noise_key_file: str | None = None  # the keyed noise's secret; else $RPDIST_NOISE_KEY, else a random key
    targets: Annotated[list[Annotated[int, Field(strict=True, ge=0, lt=roles.NUM_CLASSES)]] | None,
                       AfterValidator(_distinct),
                       Must(f"must be distinct classes in [0, {roles.NUM_CLASSES})", "--targets")] = None
    restarts: Annotated[Count, Must(name="--restarts")] = 1
    query_budget: Annotated[Count, Must(name="--query-budget")] = 400
    points: Count = 16
    alpha: Alpha = 0.001
    seed: Seed | None = None  # None: drawn from os.urandom and recorded (the release's noise must be secret)
    batch_size: Annotated[Count | None, Must(name="batch size")] = None
    workers: Count | None = None
    address: str | None = None
    device: str | None = None
    generator_epochs: Count | None = None
    # the generator per target: trained on all public images, or on those of the other classes only
    prior: Annotated[Literal[PRIORS], Must(f"must be one of {', '.join(PRIORS)}", "--prior")] = PUBLIC
    # success = the evaluator's top-1 is the target with at least this confidence (0: top-1 alone)
    judge_threshold: Annotated[float, Field(strict=True, ge=0, lt=1),
                               Must("must be a number in [0, 1)", "--judge-threshold")] = 0.0
    # classes attacked at a time (None: all); each is saved when it finishes, so fewer lose less to a stop
    targets_at_once: Annotated[Count | None, Must(name="--targets-at-once")] = None
    out: OutRoot = "results"
    run_id: str | None = None

    @model_validator(mode="after")
    def _rr_is_private(self):
        """ε = inf means DP-SGD's clip-only control; randomized response has no such setting."""
        if self.defense == "rr" and any(math.isinf(e) for e in self.epsilons or ()):
            raise InputError(f"--epsilon must be a finite number > 0 for rr, got {self.epsilons}")
        return self


def defense_configs(spec: InversionSpec) -> list[dict]:
    """The grid of (defense knobs, release, repeat, noise) rows to attack."""
    nudges = [nudge_name(d) for d in spec.nudges]
    if any(d != EXACT for d in nudges) and all(int(k) == 1 for k in spec.repeats):
        raise InputError("--nudge moves repeated queries; it needs --repeat k >= 2")
    base = [dict(repeat=int(k), noise=noise, nudge=d, attacker=att) for k in spec.repeats for noise in spec.noises
            for d in (nudges if int(k) > 1 else [EXACT]) for att in spec.attackers]
    base = [b for i, b in enumerate(base) if b not in base[:i]]
    nan = float("nan")
    sigmas, ns = spec.sigmas or DEFAULT_SIGMAS, spec.ns or DEFAULT_NS
    if spec.defense == "none":
        return [dict(sigma=nan, n=0, epsilon=nan, release="label", **b) for b in base]
    if spec.defense == "rp":
        return [dict(sigma=s, n=n, epsilon=nan, release=r, **b)
                for s in sigmas for n in ns for r in spec.releases for b in base]
    if spec.defense == "abstain":  # matched to the rp PREDICT release at each (σ, N)
        return [dict(sigma=s, n=n, epsilon=nan, release="label", **b) for s in sigmas for n in ns for b in base]
    if spec.defense == "noise":
        if not spec.sigmas:
            raise InputError("--defense noise needs --sigma (the input noise; there is no default)")
        if spec.ns and list(spec.ns) != [1]:
            raise InputError(f"--n does not apply to --defense noise (one noisy forward pass, N = 1), got {spec.ns}")
        return [dict(sigma=s, n=1, epsilon=nan, release="label", **b) for s in sigmas for b in base]
    eps = spec.epsilons or ([1.0, 3.0, 8.0, CLIP_ONLY] if spec.defense == "dpsgd" else [1.0, 3.0, 5.0])
    return [dict(sigma=nan, n=0, epsilon=e, release="label", **b) for e in eps for b in base]


def nudge_config(cfg: dict) -> dict:
    """BrepConfig fields of a config's nudge: δ in input units (σ of rp, else the target's training σ)."""
    if cfg["nudge"] == ULP:
        return dict(nudge_ulp=True)
    unit = cfg["sigma"] if cfg["sigma"] == cfg["sigma"] else roles.TARGET_TRAIN_SIGMA
    return dict(nudge=float(cfg["nudge"]) * unit)


def _decoder(generator):
    import torch

    def decode(z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return generator.decode(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))).numpy()
    return decode


def _attack_task(target: int, restarts: int, config: BrepConfig, seed: int, gen: tuple, release, tally=None
                 ) -> tuple[list[BrepAttack], int]:
    """One target class's attacks with a label-only release (runs as a Ray task); ``gen`` is the
    generator's (state, latent, hidden, side); ``tally``, when given, hears the queries of every round."""
    import torch

    from rpdist.distributed.tally import tally_flush

    torch.set_num_threads(1)
    state, latent, hidden, side = gen
    vae = roles.VAE(latent, hidden, side)
    vae.load_state_dict(state)
    vae.eval()
    attacks = [BrepAttack(target, r, latent, config, seed) for r in range(restarts)]
    run_lockstep(attacks, _decoder(vae), release, None if tally is None else tally.add.remote)
    if tally is not None:
        tally_flush(tally)
    return attacks, release.forward_passes


def _per_target(generators, targets) -> dict:
    """{target: VAE}, from one generator for all targets or a dict of them."""
    return generators if isinstance(generators, dict) else {t: generators for t in targets}


def attack_release(release, targets, restarts, config: BrepConfig, seed: int, generators, progress: str | None = None,
                   at_once: int | None = None, on_target=None) -> tuple[list[BrepAttack], int]:
    """Run BREP-MI on every target, one Ray task per class (``at_once`` of them at a time, default all), each
    in the latent space of its generator (one VAE, or {target: VAE}); returns the attacks and the exact
    forward passes of the release. ``on_target(target, attacks, passes)`` hears each class as it finishes.
    With ``progress`` (a description), a bar in queries against the walks' whole budget follows them."""
    import ray

    from rpdist.distributed.tally import Tally, as_finished
    from rpdist.reporting.progress import SampleProgress

    release.share()
    # num_cpus=0: the replica actors may hold every CPU of a small machine; the tasks mostly wait on them.
    task = ray.remote(num_cpus=0)(_attack_task)
    gens = _per_target(generators, targets)
    packed = {t: (dict(g.state_dict()), g.latent, g.hidden, g.side) for t, g in gens.items()}
    tally = None if progress is None else ray.remote(num_cpus=0)(Tally).remote()
    bar = nullcontext() if progress is None else SampleProgress(len(targets) * restarts * config.budget,
                                                                progress, enabled=True, unit="queries")
    starts = [lambda t=t: task.remote(t, restarts, config, seed, packed[t], release, tally) for t in targets]
    outs = {}
    with bar as meter:
        for index, (attacks, passes) in as_finished(starts, at_once or len(targets), tally, meter):
            outs[targets[index]] = attacks, passes
            if on_target is not None:
                on_target(targets[index], attacks, passes)
    return [a for t in targets for a in outs[t][0]], sum(fp for _, fp in outs.values())


UNJUDGED = -2  # the judge's verdict on an image whose top class the evaluator is not confident enough in


def verdicts(prob: np.ndarray, threshold: float) -> np.ndarray:
    """The judge's class per image: the evaluator's top-1 when its probability reaches ``threshold``, else
    UNJUDGED. An attack succeeds when the verdict on its reconstruction is its target."""
    return np.where(prob.max(1) >= threshold, prob.argmax(1), UNJUDGED)


def judge(evaluator, generators, attacks, threshold: float, private: tuple[np.ndarray, np.ndarray]) -> dict:
    """The evaluator's verdicts on the walks' ends and starts: reconstructions, confidences, top-1,
    success (top-1 is the target with confidence ≥ ``threshold``) and the KNN distance to the nearest
    private image of the target class, for the end and the start alike."""
    import torch

    gens = _per_target(generators, sorted({a.target for a in attacks}))
    targets = np.array([a.target for a in attacks])
    found = np.array([a.found for a in attacks])
    out = {}
    for name, latent in (("", lambda a: a.result()), ("start_", lambda a: a.starting_point())):
        images = np.stack([_decoder(gens[a.target])(latent(a)[None])[0] for a in attacks])
        with torch.inference_mode():
            prob = torch.softmax(evaluator(torch.from_numpy(images)), 1).numpy()
        confidence = prob[np.arange(len(attacks)), targets]
        out[name + "images"] = images
        out[name + "eval_confidence"] = confidence
        out[name + "eval_prediction"] = prob.argmax(1)
        out[name + "success"] = found & (verdicts(prob, threshold) == targets)
        out[name + "knn_distance"] = roles.knn_distance(evaluator, images, targets, *private)
    return out


def utility(release, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy of released labels on the test split (abstain = wrong) and the abstain rate there; ids
    distinct from attack ids."""
    before = release.forward_passes
    labels = release(X, np.arange(len(X), dtype=np.int64))
    release.forward_passes = before  # utility evaluation is not part of the attack's cost
    return float((labels == y).mean()), float((labels == ABSTAIN).mean())


def matched_abstain_rate(cfg: dict, spec: InversionSpec, models: RoleModels, seed: int, key, cache: dict) -> float:
    """The abstain rate, on the test split, of the rp PREDICT release at the config's (σ, N, noise): what
    the random-abstention baseline matches. Measured once per point of a run: ``cache`` is the run manifest's
    record, so a resumed run keeps the rates its saved classes ran at."""
    point = f"sigma={cfg['sigma']:g} n={cfg['n']} noise={cfg['noise']}"
    if point not in cache:
        rp = {**cfg, "release": PREDICT}
        release = make_release("rp", rp, spec, models, seed, key)
        cache[point] = utility(release, *roles.role_data("test", spec.dataset))[1]
    return cache[point]


def make_release(defense: str, cfg: dict, spec: InversionSpec, models: RoleModels, seed: int, key=None):
    """The release of one config; ``seed`` and ``key`` are the run's secrets (see :func:`run_secrets`)."""
    common = dict(noise=cfg["noise"], key=key)
    target = models.target
    if defense == "none":
        return LabelRelease(target, **common)
    if defense == "rp":
        return SmoothedRelease(target, cfg["sigma"], cfg["n"], release=cfg["release"], alpha=spec.alpha,
                               seed=seed, batch_size=spec.batch_size, workers=spec.workers,
                               address=spec.address, device=spec.device, **common)
    if defense == "rr":
        return RandomizedResponse(target, cfg["epsilon"], roles.NUM_CLASSES, seed=seed, **common)
    if defense == "abstain":
        return RandomAbstention(target, cfg["abstain_rate"], seed=seed, **common)
    if defense == "noise":
        return NoisyInputRelease(target, cfg["sigma"], seed=seed, batch_size=spec.batch_size, workers=spec.workers,
                                 address=spec.address, device=spec.device, **common)
    return LabelRelease(models.dpsgd[cfg["epsilon"]], **common)


@dataclass
class RoleModels:
    """The models an attack's verdicts depend on: the target, the evaluator (the judge), the attacker's
    generators (one per target class) and, for dpsgd, each released model. All are trained and cached on
    first use, so another machine has others; a run records their hashes and a resume (or a sweep adding
    points) refuses models that differ."""

    target: ModelRef
    eval: ModelRef
    generators: dict[int, roles.VAE]  # target class -> the attacker's prior for it
    dpsgd: dict[float, ModelRef]  # epsilon -> the released DP-SGD model

    @classmethod
    def load(cls, spec: InversionSpec, targets: list[int], configs: list[dict], progress: bool = False
             ) -> RoleModels:
        """Each role's model, from the cache or trained now (its epochs on stderr with ``progress``)."""
        data = spec.dataset
        dpsgd = sorted({c["epsilon"] for c in configs}) if spec.defense == "dpsgd" else []
        return cls(target=roles.target_model(dataset=data, progress=progress),
                   eval=roles.eval_model(dataset=data, progress=progress),
                   generators=prior_generators(spec, targets, progress),
                   dpsgd={e: roles.dpsgd_model(None if math.isinf(e) else e, dataset=data, progress=progress)
                          for e in dpsgd})

    def hashes(self) -> dict[str, str]:
        """Role -> sha256, under the names a manifest records them by."""
        return {"target": self.target.sha256, "eval": self.eval.sha256, "generator": prior_sha256(self.generators),
                **{dpsgd_name(e): ref.sha256 for e, ref in self.dpsgd.items()}}

    def records(self, spec: InversionSpec, targets: list[int]) -> dict[str, dict]:
        """The manifest's ``models``: each hash with how the model was made (and the classifiers' test accuracy)."""
        data, hashes = spec.dataset, self.hashes()
        exclude = (lambda t: t) if spec.prior == DISJOINT else (lambda t: None)
        gen_recipes = {t: roles.generator_recipe(spec.generator_epochs, data, exclude(t)) for t in targets}
        generator = ({"recipe": gen_recipes[targets[0]]} if spec.prior == PUBLIC else
                     {"prior": spec.prior, "recipes": {str(t): r for t, r in gen_recipes.items()}})
        return {"target": {"sha256": hashes["target"], "recipe": roles.target_recipe(dataset=data),
                           "clean_accuracy_test": roles.accuracy(self.target, dataset=data)},
                "eval": {"sha256": hashes["eval"], "recipe": roles.eval_recipe(data),
                         "clean_accuracy_test": roles.accuracy(self.eval, dataset=data)},
                "generator": {"sha256": hashes["generator"], **generator},
                **{dpsgd_name(e): {"sha256": ref.sha256} for e, ref in self.dpsgd.items()}}


def run_secrets(spec: InversionSpec, configs: list[dict], earlier: dict | None = None) -> tuple[int, str, object]:
    """The run's noise seed (``spec.seed``, else that of the ``earlier`` manifest of the run it resumes, else
    os.urandom) and its source, and the keyed-noise key (None when no config is keyed and no key file was
    given)."""
    recorded = (earlier or {}).get("details", {})
    if spec.seed is None and "seed" in recorded:
        seed, source = int(recorded["seed"]), recorded["seed_source"]
    else:
        seed, source = (random_seed(), "random") if spec.seed is None else (int(spec.seed), "--seed")
    if not 0 <= seed < 2**63:
        raise InputError(f"--seed must be a whole number in [0, 2^63), got {spec.seed!r}")
    keyed = spec.noise_key_file is not None or any(c["noise"] == KEYED for c in configs)
    return seed, source, noise_key(spec.noise_key_file) if keyed else None


def check_resumed_key(run_dir: RunDir, before: dict, key) -> None:
    """Refuse to resume keyed noise under another key than the saved classes ran under (``before``: their
    manifest's ``details.noise_key``). A key the user gave (a file or ``$RPDIST_NOISE_KEY``) must be given again,
    the same one; a key the run drew itself may be lost with its cache directory, and a new one is then drawn
    (said and counted in ``details.random_noise_keys``)."""
    given = {"file": "--noise-key-file", "environment": f"${KEY_ENV}"}
    if before.get("source") in given and key.source not in given:
        raise InputError(f"{run_dir.path} was started under a noise key from {given[before['source']]}; give the "
                         "same key again to resume it (a run does not mix keys), " + ELSEWHERE)
    if key.source in given and before.get("check", key.check) != key.check:
        raise InputError(f"{run_dir.path} was started under another noise key (check value {before['check']}, this "
                         f"key's is {key.check}); resume it with the key it started with (a run does not mix keys), "
                         + ELSEWHERE)


def key_store(run_dir: RunDir):
    """Where a run given no noise key keeps the one it draws: under the cache directory (never beside the
    results, which get shared), named by a hash of the run's location."""
    from rpdist.models.zoo import cache_dir

    where = f"{type(run_dir.store.fs).__name__}:{run_dir.store.path(run_dir.run_id)}"
    return cache_dir() / "noise-keys" / f"{hashlib.sha256(where.encode()).hexdigest()[:32]}.key"


def prior_generators(spec: InversionSpec, targets: list[int], progress: bool = False) -> dict:
    """The attacker's generator for each target class: the public-half VAE, or with the class-disjoint
    prior one trained without that class (trained and cached on first use)."""
    return {t: roles.generator(epochs=spec.generator_epochs, dataset=spec.dataset,
                               exclude=t if spec.prior == DISJOINT else None, progress=progress) for t in targets}


def prior_sha256(generators: dict) -> str:
    """One hash for the attacker's prior: its generator's (that of the cached file), or with one generator per
    target class, the sha256 of their hashes in class order."""
    from rpdist.models.refs import state_dict_sha256

    hashes = {t: state_dict_sha256(g.state_dict()) for t, g in sorted(generators.items())}
    if len(set(hashes.values())) == 1:
        return next(iter(hashes.values()))
    return hashlib.sha256(" ".join(f"{t}:{h}" for t, h in hashes.items()).encode()).hexdigest()


def run_inversion(spec: InversionSpec, progress: bool = False) -> Outcome:
    """Attack every defense config; write attack.parquet, reconstructions.png and manifest.json.

    Each (config, target class) is saved as it finishes (:mod:`rpdist.attacks.parts`), so rerunning an
    interrupted run id resumes with the classes left, on the models, seed and configuration it started with;
    rerunning a finished one returns its result."""
    configs = defense_configs(spec)
    targets = spec.targets or list(range(roles.NUM_CLASSES))
    run_id = spec.run_id or f"attack-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    run_dir = RunDir(spec.out, run_id, "attack.parquet")
    config = {**asdict(spec), "run_id": run_id}
    config.pop("out")
    existing = run_dir.claim(config, "--run-id", compare=_identity)
    session = time.perf_counter()
    if run_dir.complete:
        return _outcome(run_dir, existing)
    parts = AttackParts(run_dir, targets)
    earlier = existing if existing is not None and parts.done else None
    seed, seed_source, key = run_secrets(spec, configs, earlier)
    if key is not None and earlier is not None:
        check_resumed_key(run_dir, earlier.get("details", {}).get("noise_key", {}), key)

    from rpdist.distributed.pool import ensure_ray

    ensure_ray(spec.address)
    data = spec.dataset
    role_models = RoleModels.load(spec, targets, configs, progress)
    generators = role_models.generators
    models = role_models.records(spec, targets)
    if earlier is not None:
        _check_models(run_dir, earlier, models)
        if progress:
            print(f"  resuming {run_dir.path}: {len(parts.done)} of {len(configs) * len(targets)} (config, class) "
                  "attacks saved", file=sys.stderr)
    # A random key is kept, so that a resume answers under it (only now: a refused run keeps none).
    kept_at = key_store(run_dir) if key is not None and key.source == "random" else None
    if kept_at is not None:
        key = stored_key(kept_at)
    recorded = (earlier or {}).get("details", {})
    keys_drawn = recorded.get("random_noise_keys", 0)
    if key is not None and key.source == "generated":
        keys_drawn += 1
        if progress:
            print(f"  keyed noise: no --noise-key-file or ${KEY_ENV}, so a random key is kept (mode 0600) in "
                  f"{kept_at} until the run completes", file=sys.stderr)
        if keys_drawn > 1 and progress:
            print("  resuming keyed noise with a new random key (the earlier one was not kept): classes saved "
                  "before ran under another key", file=sys.stderr)
    manifest = new_manifest(
        ATTACK.name, config, models=models, dataset={"spec": spec.dataset}, device={"batch_size": spec.batch_size},
        timings={"started": (earlier or {}).get("timings", {}).get("started")
                 or dt.datetime.now(dt.timezone.utc).isoformat(),
                 "seconds": (earlier or {}).get("timings", {}).get("seconds", 0.0)},
        details={"reconstructions": RECONSTRUCTIONS, "seed": seed, "seed_source": seed_source,
                 "noise_key": key.describe() if key is not None else {"source": "none (no keyed noise)"},
                 **({"random_noise_keys": keys_drawn} if keys_drawn else {}),
                 "keyed_grid_sigmas": KEY_GRID_SIGMAS, "judge_threshold": spec.judge_threshold,
                 "prior": spec.prior, "targets_at_once": spec.targets_at_once or len(targets),
                 "config_seconds": recorded.get("config_seconds", [0.0] * len(configs)),
                 **({"matched_abstain_rates": recorded.get("matched_abstain_rates", {})}
                    if spec.defense == "abstain" else {})})
    run_dir.write_manifest(manifest)
    clock = _Clock(manifest, session)
    evaluator = role_models.eval.load("cpu")
    private = roles.role_data("private", data)
    X_test, y_test = roles.role_data("test", data)
    labels = []
    for index, cfg in enumerate(configs):
        if spec.defense == "abstain":
            rates = manifest["details"]["matched_abstain_rates"]
            cfg = {**cfg, "abstain_rate": matched_abstain_rate(cfg, spec, role_models, seed, key, rates)}
            run_dir.write_manifest(manifest)  # recorded before any class runs at it
        labels.append(_label(spec.defense, cfg))
        left = parts.left(index)
        if not left:
            continue
        release = make_release(spec.defense, cfg, spec, role_models, seed, key)
        saved = parts.rows(index)
        acc, abstain_rate = (utility(release, X_test, y_test) if saved is None else
                             (float(saved["utility_accuracy"].iloc[0]), float(saved["abstain_rate"].iloc[0])))
        brep = BrepConfig(budget=spec.query_budget, points=spec.points, repeat=cfg["repeat"],
                          abstain_aware=cfg["attacker"] == ABSTAIN_AWARE, **nudge_config(cfg))
        clock.start(index)

        def save(target, attacks, passes, index=index, cfg=cfg, brep=brep, acc=acc, abstain_rate=abstain_rate):
            v = judge(evaluator, generators, attacks, spec.judge_threshold, private)
            per_attack = _split_passes(attacks, passes, spec.defense, cfg)
            rows = [_row(spec, cfg, brep, a, fp, v, i, acc, abstain_rate, len(y_test))
                    for i, (a, fp) in enumerate(zip(attacks, per_attack))]
            parts.save(index, target, rows, v["images"][:, 0])
            clock.tick(index)
            run_dir.write_manifest(manifest)

        attack_release(release, left, spec.restarts, brep, seed, generators,
                       labels[-1] if progress else None, spec.targets_at_once, save)
        if progress:
            done = parts.rows(index)
            print(f"  {labels[-1]}: ASR {done['success'].mean():.0%} (start {done['start_success'].mean():.0%}), "
                  f"utility {acc:.1%}, abstain {abstain_rate:.1%}, "
                  f"{manifest['details']['config_seconds'][index]:.1f}s", file=sys.stderr)
    table, images = parts.collect(len(configs))
    table["seconds"] = [manifest["details"]["config_seconds"][i] for i in table.pop("config")]
    run_dir.write_table(pa.Table.from_pandas(table, preserve_index=False), run_dir.final_name)
    side = roles.side(data)
    grid = images.reshape(len(configs), len(targets) * spec.restarts, side, side)
    save_grid(grid, labels, [str(t) for t in targets for _ in range(spec.restarts)], run_dir)
    manifest["status"] = "complete"
    manifest["timings"].update(seconds=clock.total + time.perf_counter() - session,
                               finished=dt.datetime.now(dt.timezone.utc).isoformat())
    run_dir.write_manifest(manifest)
    run_dir.drop_chunks()
    if kept_at is not None:
        kept_at.unlink(missing_ok=True)  # nothing is left to resume under it
    return _outcome(run_dir, manifest)


def _identity(config: dict) -> dict:
    """What a resumed run must share with the one that started it: everything but how many classes are
    attacked at a time (that changes when a class is saved, not what it computes)."""
    return {k: v for k, v in config.items() if k != "targets_at_once"}


def _check_models(run_dir: RunDir, earlier: dict, mine: dict) -> None:
    """Refuse to resume on other models than the saved classes ran on (role models trained on demand differ
    from one machine to the next)."""
    before = recorded_models(earlier, mine)
    changed = [name for name in before if before[name] != mine[name]["sha256"]]
    if changed:
        name = changed[0]
        raise InputError(f"{run_dir.path} was started on another {name} model ({before[name][:8]}, this "
                         f"machine's is {mine[name]['sha256'][:8]}); a run does not mix models: resume it with "
                         "the $RPDIST_CACHE that started it, " + ELSEWHERE)


class _Clock:
    """Seconds of attack work per config and of the run, summed over the sessions of a resumed run (this one
    began at ``session``, a perf_counter time); work lost in flight at an interruption is not counted."""

    def __init__(self, manifest: dict, session: float):
        self.manifest = manifest
        self.total = manifest["timings"]["seconds"]
        self.session = session
        self.began = self.base = 0.0

    def start(self, index: int) -> None:
        """A config's attack starts (or resumes) now."""
        self.began, self.base = time.perf_counter(), self.manifest["details"]["config_seconds"][index]

    def tick(self, index: int) -> None:
        """A class of the config was saved now."""
        now = time.perf_counter()
        self.manifest["details"]["config_seconds"][index] = self.base + now - self.began
        self.manifest["timings"]["seconds"] = self.total + now - self.session


def _row(spec: InversionSpec, cfg: dict, brep: BrepConfig, a: BrepAttack, passes: int, v: dict, i: int, acc: float,
         abstain_rate: float, tests: int) -> dict:
    """One attack's row of attack.parquet (its config's ``seconds`` is added when the run is collected)."""
    return {"defense": spec.defense, **{k: cfg[k] for k in ("sigma", "n", "epsilon", "release")},
            "noise": cfg["noise"], "repeat": cfg["repeat"], "nudge": cfg["nudge"], "attacker": cfg["attacker"],
            "nudge_distance": brep.nudge if not brep.nudge_ulp else float("nan"),
            "target": a.target, "restart": a.restart, "success": bool(v["success"][i]),
            "eval_confidence": float(v["eval_confidence"][i]), "eval_prediction": int(v["eval_prediction"][i]),
            "knn_distance": float(v["knn_distance"][i]), "start_success": bool(v["start_success"][i]),
            "start_eval_confidence": float(v["start_eval_confidence"][i]),
            "start_knn_distance": float(v["start_knn_distance"][i]),
            "found": a.found, "queries": a.queries, "forward_passes": passes, "steps": a.steps,
            "accepted_steps": a.accepted, "final_radius": float(a.radius),
            "utility_accuracy": acc, "utility_tests": tests, "abstain_rate": abstain_rate,
            "query_budget": spec.query_budget}


def _outcome(run_dir: RunDir, manifest: dict) -> Outcome:
    reader = lambda columns=None: run_dir.read_final(columns=columns).to_pandas()  # noqa: E731
    return Outcome(ATTACK.name, run_dir.path, manifest, ATTACK.summarize(reader()), reader=reader)


def _split_passes(attacks, total: int, defense: str, cfg: dict) -> list[int]:
    """Forward passes per attack. Every fresh query costs 1 (label) or N (rp) evaluations, so the split
    is exact; keyed releases answer repeated identical queries once, so their measured total is
    spread by queries (and the per-config sum stays exact)."""
    per_query = cfg["n"] if defense in ("rp", "noise") else 1
    exact = [a.queries * per_query for a in attacks]
    if sum(exact) == total:
        return exact
    q = np.array([a.queries for a in attacks], dtype=np.float64)
    share = np.floor(total * q / q.sum()).astype(np.int64)
    share[: total - int(share.sum())] += 1
    return share.tolist()


def _label(defense: str, cfg: dict) -> str:
    parts = [defense]
    if defense == "rp":
        parts += [f"σ={cfg['sigma']:g}", f"N={cfg['n']}", release_name(cfg["release"])]
    elif defense == "abstain":
        parts += [f"σ={cfg['sigma']:g}", f"N={cfg['n']}", f"rate={cfg['abstain_rate']:.2f}"]
    elif defense == "noise":
        parts.append(f"σ={cfg['sigma']:g}")
    elif defense in ("dpsgd", "rr"):
        parts.append("clip-only" if math.isinf(cfg["epsilon"]) else f"ε={cfg['epsilon']:g}")
    if cfg["repeat"] > 1 or cfg["noise"] == KEYED:
        parts += [f"k={cfg['repeat']}", cfg["noise"]]
    if cfg.get("nudge", EXACT) != EXACT:
        parts.append(f"δ={cfg['nudge']}" + ("" if cfg["nudge"] == ULP else "σ"))
    if cfg.get("attacker", PLAIN) != PLAIN:
        parts.append(cfg["attacker"])
    return " ".join(parts)


def save_grid(grid: np.ndarray, row_labels: list[str], col_labels: list[str], run_dir: RunDir) -> None:
    """Reconstructions as a PNG beside the manifest: one row per defense config, one column per target class."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols + 2.2, 0.95 * rows + 0.4), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(grid[i, j], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_labels[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    body = buf.getvalue()
    run_dir.store.write_bytes(body, run_dir.run_id, RECONSTRUCTIONS)
