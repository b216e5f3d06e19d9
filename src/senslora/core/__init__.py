"""The method itself: target layers -> sensitivity per module -> ranks -> a PEFT LoraConfig.

Imports only `senslora.utils`; knows nothing of fine-tuning, reports or the command line.

    targets.py              which Linear layers are adapted, and their shapes
    module_types.py         module type and position from a full module name (for ordering and figures)
    calibration.py          calibration batches, the loss, and helpers the estimators share
    estimators/             Hessian-diagonal estimators: activation, fisher, hutchinson; obd, kfac,
                            gradient_spectrum
    sensitivity.py          estimate_sensitivity: estimator -> ModuleSensitivity per module
    metrics.py              trace, top-k and effective rank of a diagonal; sensitivity.json
    allocation.py           allocate_ranks: fused scores -> integer ranks under a budget; DominanceWarning
    allocation_options.py   the allocation's options (scheme, budget unit, weighting, metric groups)
    allocation_result.py    Allocation: the ranks and how they were obtained; ranks.json
    fusion.py               fusion weights c(S) and the fused score theta(w)
    budget.py               the budget, the bounds on a rank, water-filling, integer rounding
    progressive.py          Progressive Rank Allocation: levels one apart over whole groups
    spectrum_allocation.py  ranks from gradient singular values
    peft_export.py          Allocation -> peft.LoraConfig(rank_pattern=..., alpha_pattern=...)
    config_allocation.py    allocate_lora_config: the user's LoraConfig with rank_pattern / alpha_pattern filled
    artifacts.py            reading sensitivity.json and ranks.json (their file names, their errors)
    axolotl.py              an allocation as Axolotl's integer lora_r / alpha / rank and alpha patterns
    serving.py              serving-safe adapters: each module's scale baked into lora_B, one rank for all
"""
