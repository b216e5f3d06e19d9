"""The `senslora` command line (console script `senslora = senslora.cli:main`; also `python -m senslora.cli`).

The top layer: it parses options and calls the library below it, nothing else.

    commands.py         sensitivity, allocate, finetune, evaluate; the parser, exit codes and `main`
    report_commands.py  report and compare
    export_commands.py  export: ranks or a run as a LoraConfig, an adapter, an Axolotl fragment
"""

from senslora.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
