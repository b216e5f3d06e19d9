"""The three Hessian-diagonal estimators: `activation`, `fisher` and `hutchinson`.

Each returns, per target layer, a 1-D float tensor of diagonal entries (on the CPU):
`activation` gives d_in entries, `fisher` and `hutchinson` one entry per weight element.
"""

from senslora.estimators.activation import activation_diagonals
from senslora.estimators.fisher import fisher_diagonals
from senslora.estimators.hutchinson import hutchinson_diagonals

__all__ = ["activation_diagonals", "fisher_diagonals", "hutchinson_diagonals"]
