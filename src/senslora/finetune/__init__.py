"""Fine-tuning with the ranks of `senslora.core`: data, models, training, evaluation, the whole run.

Imports `senslora.core` and `senslora.utils`; knows nothing of reports or the command line.

    options.py           typed options: a dataclass field with its help text, type and choice checks
    config.py            the option groups (data, calibration, allocation, adapter, training, evaluation,
                         run), each validating itself, and RunConfig, all of them together
    config_file.py       reading a YAML/JSON config file into options (TrainingArguments passed through)
    data/                task data: presets, local files, the hub, sampling, calibration subsets
    tokenization.py      tokenising tasks and building collators and calibration batches
    models.py            loading a model and tokenizer for a task
    methods/             senslora, lora, adalora, eva, one module each: adapter, calibration, step hooks
    training.py          TrainingConfig (the training group), the schedule and data order
    engine.py            train(): the Trainer of a run, its arguments, and resuming it
    trainer.py           SensloraTrainerMixin: the Trainer's overrides (data order, schedule, log, evaluation)
    callbacks.py         the Trainer callbacks: step timing and checks, checkpoints
    run_state.py         RunState: what a run tracks beside the Trainer, and its checkpoint form
    numeric_health.py    NaN/inf checks of loss, gradients and weights (TrainingDivergedError)
    checkpoint_files.py  the checkpoint-N directories on disk, which are complete, their state file
    saving.py            writing a checkpoint's senslora state and the best adapter
    resume.py            whether a run can resume, and restoring its trainable weights and state
    sft.py               TRL's SFTTrainer for instruction data
    head_warmup.py       training the task head alone before calibration
    evaluation.py        evaluating a model on a task
    task_metrics.py      the metric of each task
    environment.py       the device to compute on, the package versions recorded in results
    preparation.py       loading data, then the model for its task, then the calibration batches
    rank_steps.py        the sensitivity pass (after head warm-up), the allocation, checks that ranks fit
    run_directory.py     when a run directory may be written, resumed or replaced; the adapter's sidecar
    pipeline.py          prepare -> sensitivity -> allocation -> train -> evaluate, as one run directory
    saved_adapter.py     evaluating a saved adapter loaded with stock PEFT, after checks that it fits
    export.py            a ranks.json or finished run as a LoraConfig, adapter, Axolotl fragment or merged model
"""
