"""The three Hessian-diagonal estimators: `activation`, `fisher` and `hutchinson`.

Each returns, per target layer, a 1-D float tensor of diagonal entries (on the CPU):
`activation` gives d_in entries, `fisher` and `hutchinson` one entry per weight element.
Opt-in variants beyond the paper: `obd` and `kfac` (one entry per weight element) and
`gradient_spectrum` (the singular values of the mean gradient), see docs/estimators.md.
"""

from senslora.core.estimators.activation import activation_diagonals
from senslora.core.estimators.fisher import fisher_diagonals
from senslora.core.estimators.gradient_spectrum import gradient_spectra
from senslora.core.estimators.hutchinson import hutchinson_diagonals
from senslora.core.estimators.kfac import kfac_diagonals
from senslora.core.estimators.obd import obd_diagonals

__all__ = [
    "activation_diagonals",
    "fisher_diagonals",
    "gradient_spectra",
    "hutchinson_diagonals",
    "kfac_diagonals",
    "obd_diagonals",
]
