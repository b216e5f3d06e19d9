"""Fine-tuning with the ranks of `senslora.core`: data, models, training, evaluation, the whole run.

Imports `senslora.core` and `senslora.utils`; knows nothing of reports or the command line.

    options.py           typed options: a dataclass field with its help text, type and choice checks
    config.py            the option groups (data, calibration, allocation, adapter, training, evaluation,
                         run), each validating itself, and RunConfig, all of them together
    config_file.py       reading a YAML/JSON config file into options (TrainingArguments passed through)
    environment.py       the device to compute on, the package versions recorded in results
    data/                task data: presets, local files, the hub, sampling, splits, calibration subsets
    tokenization.py      tokenising tasks and building collators and calibration batches
    models.py            loading a model and tokenizer for a task
    preparation.py       loading data, then the model for its task, then the calibration batches
    methods/             senslora, lora, adalora, eva, one module each: adapter, calibration, step hooks
    rank_steps.py        the sensitivity pass (after head warm-up), the allocation, checks that ranks fit
    training/            training a run on transformers.Trainer:
        settings.py        TrainingConfig (the training group), the schedule and data order
        engine.py          train(): the Trainer of a run, its arguments, and resuming it
        trainer.py         SensloraTrainerMixin: the Trainer's overrides (data order, schedule, log, evaluation)
        callbacks.py       the Trainer callbacks: step timing and checks, checkpoints
        numeric_health.py  NaN/inf checks of loss, gradients and weights (TrainingDivergedError)
        sft.py             TRL's SFTTrainer for instruction data
        head_warmup.py     training the task head alone before calibration
    run_files/           what a run keeps on disk:
        run_directory.py   when a run directory may be written, resumed or replaced; the adapter's sidecar
        checkpoints.py     the checkpoint-N directories, which are complete, their state; resuming from one
        saving.py          writing a checkpoint's senslora state and the best adapter
        run_state.py       RunState: what a run tracks beside the Trainer, and its checkpoint form
    evaluation/          scoring a model:
        evaluate.py        evaluating a model on a split with the task's metrics
        task_metrics.py    the metric of each task
        saved_adapter.py   evaluating a saved adapter loaded with stock PEFT, after checks that it fits
    pipeline.py          prepare -> sensitivity -> allocation -> train -> evaluate, as one run directory
    export.py            a ranks.json or finished run as a LoraConfig, adapter, Axolotl fragment or merged model
"""
