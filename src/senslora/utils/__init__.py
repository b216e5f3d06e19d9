"""Utilities every layer may use; they import nothing else from senslora.

io.py              atomic writes (temporary file, fsync, os.replace), bounded reads, output-path checks
distributed.py     several processes under torch.distributed: rank, world size, broadcast, gather, seeds
_quiet_imports.py  drops two import-time notices of bitsandbytes (an offline hub kernel) before peft imports it
"""
