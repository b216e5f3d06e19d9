"""Scoring a model: evaluation on a split with the task's metrics, the metrics themselves, and
evaluating a saved adapter loaded with stock PEFT.
"""
