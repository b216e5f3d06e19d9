"""Where a run computes and what it ran with: the device to use, the versions recorded in every result,
and quiet libraries (no load reports or deprecation chatter on the terminal)."""

from __future__ import annotations

import platform
import sys

import torch


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on, and the Python and platform."""
    import peft
    import transformers

    from senslora import __version__

    return {
        "senslora": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not allowed; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} is not available: no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} is not available: no MPS backend")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def quiet_libraries() -> None:
    """Keep the terminal for our own progress and results: no load reports or deprecation chatter."""
    import warnings

    import transformers

    if getattr(warnings.showwarning, "senslora", False):
        return  # already installed: never wrap our own handler again
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    warnings.filterwarnings("ignore", message=".*low_cpu_mem_usage.*")
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        from senslora.core.allocation import DominanceWarning

        if issubclass(category, DominanceWarning):
            print(f"senslora: warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    show.senslora = True
    warnings.showwarning = show
