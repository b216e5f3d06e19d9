"""`python -m senslora.cli ...`: the same as the `senslora` console script."""

import sys

from senslora.cli import main

sys.exit(main())
