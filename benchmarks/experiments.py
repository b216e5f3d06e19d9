"""The benchmark grid: which experiments each profile runs.

One experiment = model + task + method + budget + seed (+ options) -> one results JSON. Every experiment is
a set of `senslora.finetune.config.RunConfig` overrides; the harness never copies the library's training loop.

Profiles:
- smoke: two runs of a few steps (CI);
- quick: about 15 minutes on a quiet 2-core CPU: LoRA and senslora (activation; fisher with the head
  safeguards) at the main job's size, 2 seeds (a subset of `full`);
- mainjob: the README's main job for uniform LoRA and senslora (rank and params budgets), 3 seeds;
- full: the published tables at the main job's scale (it contains `mainjob`): the head-related safeguards
  for fisher/hutchinson, AdaLoRA and EVA, the half budget, a learning-rate sweep for uniform LoRA and
  senslora, the paper's ablations and ours, average rank 8, SmolLM2 language modelling (hours on this CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evidence import evidence as evidence_experiments
from experiment import Experiment

MINILM_RT = {"model": "minilm", "data": "rotten_tomatoes", "max_validation_examples": 1000}
ESTIMATORS = ("activation", "fisher", "hutchinson")


def _method(method: str, estimator: str | None = None) -> dict[str, Any]:
    return {"method": method} | ({"estimator": estimator} if estimator else {})


def _label(method: str, estimator: str | None) -> str:
    return f"senslora-{estimator}" if method == "senslora" else method


def smoke() -> list[Experiment]:
    base = MINILM_RT | {"max_train_examples": 64, "max_validation_examples": 64, "max_steps": 4, "epochs": 1}
    base |= {"calibration_examples": 32}
    return [
        Experiment("smoke-lora", "smoke", base | _method("lora")),
        Experiment("smoke-senslora", "smoke", base | _method("senslora", "activation")),
    ]


def quick() -> list[Experiment]:
    """About 15 minutes on a quiet 2-core CPU: LoRA, senslora (activation) and senslora (fisher with head
    warm-up and cap) at the main job's size, 2 seeds each; a subset of `full`, sharing its results."""
    names = {f"{prefix}-s{seed}" for prefix in QUICK for seed in (0, 1)}
    return [e for e in full() if e.name in names]


QUICK = ("mainjob-lora", "mainjob-senslora-activation-params", "full-head-fisher-warmup-cap")


def full() -> list[Experiment]:
    """Every published table at the main job's scale, in the order the runner works through them.

    The README's main job (2,000 snippets, 2 epochs) sizes every MiniLM run, so that the `mainjob`
    experiments are the learning-rate 1e-3 cells of the main table. Senslora runs use the params budget
    unit, so every method in a table has (nearly) the same trainable parameters.
    """
    base = MINILM_RT | {"max_train_examples": 2000, "epochs": 2}
    seeds = (0, 1, 2)
    params = {"budget_unit": "params"}
    activation = params | UNCAPPED
    experiments = mainjob()
    for estimator in ("fisher", "hutchinson"):
        variants = dict(HEAD_VARIANTS)
        if estimator == "hutchinson":
            variants.pop("warmup-restore")
        for seed in seeds:
            for label, extra in variants.items():
                overrides = _method("senslora", estimator) | params | {"seed": seed} | extra
                experiments.append(Experiment(f"full-head-{estimator}-{label}-s{seed}", "head", base | overrides))
    for seed in seeds:
        for lr in (5e-4, 2e-3):
            for method, estimator in [("lora", None), ("senslora", "activation")]:
                name = f"full-{_label(method, estimator)}-r4-lr{lr:g}-s{seed}"
                overrides = _method(method, estimator) | {"learning_rate": lr, "seed": seed}
                overrides |= activation if method == "senslora" else {}
                experiments.append(Experiment(name, "main", base | overrides))
    for seed in seeds:
        for method in ("adalora", "eva"):
            experiments.append(Experiment(f"full-{method}-r4-s{seed}", "main", base | _method(method) | {"seed": seed}))
    for seed in seeds:  # PEFT's AdaLoRA starts from E = 0: at lr 1e-3 it stays at the majority class here
        overrides = _method("adalora") | {"seed": seed, "learning_rate": 5e-3}
        experiments.append(Experiment(f"full-adalora-r4-lr0.005-s{seed}", "main", base | overrides))
    for seed in seeds:
        half = _method("senslora", "activation") | activation | {"avg_rank": 2, "seed": seed}
        experiments.append(Experiment(f"full-senslora-activation-r2-s{seed}", "half_budget", base | half))
    for seed in seeds:
        for method, estimator in [("lora", None), ("senslora", "activation")]:
            overrides = _method(method, estimator) | {"avg_rank": 8, "seed": seed}
            overrides |= activation if method == "senslora" else {}
            experiments.append(Experiment(f"full-{_label(method, estimator)}-r8-s{seed}", "rank8", base | overrides))
            name = f"full-{_label(method, estimator)}-r8-lr0.002-s{seed}"  # the sweep's best LoRA lr at rank 4
            experiments.append(Experiment(name, "rank8", base | overrides | {"learning_rate": 2e-3}))
    # SmolLM2 steps cost about 15x MiniLM's here: 32 steps of 8 Wikipedia paragraphs (128 tokens)
    lm = {"model": "smollm2", "data": "wikipedia", "max_length": 128, "max_train_examples": 256}
    lm |= {"max_validation_examples": 100, "calibration_examples": 64, "batch_size": 8, "epochs": 1}
    lm |= {"calibration_unit": "texts"}  # as these rows were run: 64 texts, every block they make
    for seed in (0, 1):
        for method, estimator in [("lora", None), ("senslora", "activation")]:
            overrides = lm | _method(method, estimator) | {"avg_rank": 8, "seed": seed, "learning_rate": 1e-3}
            overrides |= activation if method == "senslora" else {}
            experiments.append(Experiment(f"full-smollm2-{_label(method, estimator)}-s{seed}", "decoder", overrides))
    for seed in (0, 1):  # SmolLM2's activation allocation gives one down_proj 37 % of the ranks: capped at 2x
        overrides = lm | _method("senslora", "activation") | params | {"avg_rank": 8, "seed": seed}
        overrides |= {"learning_rate": 1e-3, "max_rank_factor": 2.0}
        experiments.append(Experiment(f"full-capped-smollm2-senslora-activation-s{seed}", "decoder", overrides))
    for seed in seeds:  # control: the same seed's activation ranks shuffled among equal-cost modules
        shuffled = ALLOCATIONS / f"activation-shuffled-s{seed}.json"  # from benchmarks/shuffled_allocations.py
        overrides = _method("senslora", "activation") | params | {"seed": seed, "ranks": str(shuffled)}
        experiments.append(Experiment(f"full-ablation-shuffled-s{seed}", "ablation", base | overrides))
    for seed in seeds:  # the rest of the rank-8 main table: each loss-based estimator (default safeguards), PEFT's
        for method, estimator, lr in [
            ("senslora", "fisher", 1e-3),
            ("senslora", "hutchinson", 1e-3),
            ("eva", None, 1e-3),
            ("adalora", None, 5e-3),
        ]:
            overrides = _method(method, estimator) | {"avg_rank": 8, "seed": seed, "learning_rate": lr}
            overrides |= params if method == "senslora" else {}
            name = f"full-{_label(method, estimator)}-r8-lr{lr:g}-s{seed}"
            experiments.append(Experiment(name, "rank8", base | overrides))
    for seed in seeds:
        for label, extra in ABLATIONS.items():
            overrides = _method("senslora", "activation") | activation | {"seed": seed} | extra
            experiments.append(Experiment(f"full-ablation-{label}-s{seed}", "ablation", base | overrides))
    return experiments


# The published activation rows ran uncapped, the activation estimator's default until the 2x cap became the
# default for every estimator: kept explicit so that those rows keep their meaning (and their labels, see
# summarize.IMPLICIT_SETTINGS).
UNCAPPED: dict[str, Any] = {"max_rank_factor": 0}

# The head-related safeguards of the loss-based estimators, each switched on or off explicitly (0: off).
HEAD_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"head_warmup_steps": 0, "max_rank_factor": 0},
    "warmup": {"head_warmup_steps": 50, "max_rank_factor": 0},
    "cap": {"head_warmup_steps": 0, "max_rank_factor": 2.0},
    "warmup-cap": {"head_warmup_steps": 50, "max_rank_factor": 2.0},
    "no-pooler": {"target_regex": r".*encoder\.layer\.\d+\..*", "head_warmup_steps": 0, "max_rank_factor": 0},
    "warmup-restore": {"head_warmup_steps": 50, "restore_warmed_head": True, "max_rank_factor": 0},
}

# The paper's ablations and ours, all on the activation estimator at average rank 4 (params budget). The
# budget unit `rank` vs `params` is not repeated here: it is the `mainjob` pair of senslora experiments.
ABLATIONS: dict[str, dict[str, Any]] = {
    "global-only": {"metrics": ["global"]},
    "local-only": {"metrics": ["local"]},
    "equal-weights": {"weighting": "equal"},
    "pra": {"scheme": "pra"},
    "alpha-fixed": {"alpha_mode": "fixed"},
    "attention-only": {"target_modules": ["query", "key", "value", "attention.output.dense"]},
}


def mainjob() -> list[Experiment]:
    """The README's main job (2,000 snippets, 2 epochs, lr 1e-3) for LoRA and senslora, 3 seeds."""
    base = MINILM_RT | {"max_train_examples": 2000, "epochs": 2}
    experiments = []
    for seed in (0, 1, 2):
        variants = {
            "lora": _method("lora"),
            "senslora-activation-rank": _method("senslora", "activation") | {"budget_unit": "rank"} | UNCAPPED,
            "senslora-activation-params": _method("senslora", "activation") | {"budget_unit": "params"} | UNCAPPED,
        }
        for label, overrides in variants.items():
            experiments.append(Experiment(f"mainjob-{label}-s{seed}", "main", base | overrides | {"seed": seed}))
    return experiments


def evidence() -> list[Experiment]:
    """Test beds where allocation may matter, with their controls (benchmarks/evidence.py)."""
    return evidence_experiments()


PROFILES = {"smoke": smoke, "quick": quick, "mainjob": mainjob, "full": full, "evidence": evidence}
RESULTS = Path(__file__).resolve().parent / "results"
ALLOCATIONS = Path(__file__).resolve().parent / "allocations"


def results_directory(profile: str) -> Path:
    """Where a profile's results live; `mainjob` and `quick` are parts of `full` and share its directory."""
    return RESULTS / ("full" if profile in ("mainjob", "quick") else profile)
