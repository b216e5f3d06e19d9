"""What a run keeps on disk: the run directory and the adapter's sidecar, checkpoints (where they
lie, which are complete, resuming from them), what is written as it trains, and its tracked state.
"""
