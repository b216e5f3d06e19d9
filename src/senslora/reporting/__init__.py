"""Looking at allocations: a report of one run (figures, HTML, markdown) and the comparison of two.

Imports `senslora.core` and `senslora.utils` only: no model, no training (`senslora.finetune` is not needed).
"""
