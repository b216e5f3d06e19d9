"""Fine-tuning with the ranks of `senslora.core`: data, models, training, evaluation, the whole run.

Imports `senslora.core` and `senslora.utils`; knows nothing of reports or the command line.

    options.py       typed options: a dataclass field with its help text, type and choice checks
    config.py        the option groups (data, calibration, allocation, adapter, training, evaluation,
                     run), each validating itself, and RunConfig, all of them together
    config_file.py   reading a YAML/JSON config file into options (TrainingArguments passed through)
    data/            task data: presets, local files, the hub, sampling, calibration subsets
    tokenization.py  tokenising tasks and building collators and calibration batches
    models.py        loading a model and tokenizer for a task
    methods.py       senslora, lora, adalora, eva: building the PEFT model of each
    training.py      TrainingConfig (the training group), the schedule and data order, divergence checks
    engine.py        transformers.Trainer with senslora's checkpoints, resume and log
    sft.py           TRL's SFTTrainer for instruction data
    head_warmup.py   training the task head alone before calibration
    evaluation.py    evaluating a model on a task
    task_metrics.py  the metric of each task
    environment.py   the device to compute on, the package versions recorded in results
    preparation.py   loading data, then the model for its task, then the calibration batches
    rank_steps.py    the sensitivity pass (after head warm-up), the allocation, checks that ranks fit
    run_directory.py when a run directory may be written, resumed or replaced; the adapter's sidecar
    pipeline.py      prepare -> sensitivity -> allocation -> train -> evaluate, as one run directory
    saved_adapter.py evaluating a saved adapter loaded with stock PEFT, after checks that it fits
"""
