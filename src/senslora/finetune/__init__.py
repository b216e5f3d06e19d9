"""Fine-tuning with the ranks of `senslora.core`: data, models, training, evaluation, the whole run.

Imports `senslora.core` and `senslora.utils`; knows nothing of reports or the command line.

    config.py            RunConfig: every option of a run, with its help text and checks
    data/                task data: presets, local files, the hub, sampling, calibration subsets
    tokenization.py      tokenising tasks and building collators and calibration batches
    models.py            loading a model and tokenizer for a task
    methods.py           senslora, lora, adalora, eva: building the PEFT model of each
    training.py          TrainingConfig, the schedule and data order, divergence checks
    engine.py            train(): the Trainer of a run, its arguments, and resuming it
    trainer.py           SensloraTrainerMixin: the Trainer's overrides (data order, schedule, log, evaluation)
    callbacks.py         the Trainer callbacks: step timing and checks, checkpoints, AdaLoRA
    run_state.py         RunState: what a run tracks beside the Trainer, and its checkpoint form
    numeric_health.py    NaN/inf checks of loss, gradients and weights (TrainingDivergedError)
    checkpoint_files.py  the checkpoint-N directories on disk, which are complete, their state file
    saving.py            writing a checkpoint's senslora/ state and the best adapter, atomically
    resume.py            checking the checkpoint a run resumes from and restoring its weights
    sft.py               TRL's SFTTrainer for instruction data
    head_warmup.py       training the task head alone before calibration
    evaluation.py        evaluating a model on a task
    task_metrics.py      the metric of each task
    pipeline.py          prepare -> sensitivity -> allocation -> train -> evaluate, as one run directory
"""
