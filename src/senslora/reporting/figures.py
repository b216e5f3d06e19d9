"""What every figure of the package shares: the resolution and a PNG encoding that is the same every run.

At DPI = 96 a size in multiples of 1/8 inch is a whole number of pixels (96 / 8 = 12).
"""

from __future__ import annotations

import io
from typing import Any

DPI = 96  # 1/8 inch = 12 pixels: every figure size is a whole number of pixels


def figure_png_bytes(figure: Any) -> bytes:
    """Render a matplotlib Figure with the Agg canvas to PNG bytes (no version stamp: same bytes every run)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    canvas.print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()
