"""Training a run on `transformers.Trainer`: its settings, the Trainer subclass, callbacks,
NaN/inf checks, TRL's SFTTrainer for instruction data and the head warm-up before calibration.
"""
