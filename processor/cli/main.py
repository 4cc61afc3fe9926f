"""The `shakers-rules` command: a thin shell over processor.* and rules.*, one module per command group.

Exit status (SPEC §7): 0 success; 1 unexpected failure; 2 usage error;
3 invalid policies; 4 invalid or incomplete export; 5 decisions written but
some reports not delivered; 6 another run holds the same ledger.
"""
from __future__ import annotations

import os

import click

from processor.cli import night, nightly, policy, reports


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="shakers-rules")
def main():
    """shakers-rules: every night, turn the marketplace's export into the actions its policies
    (policies.yaml) call for, evaluated by the durable-rules engine, and report them to Project
    Success.

    \b
    Typical night:
      shakers-rules validate policies.yaml
      shakers-rules run --export exports/2026-11-24 --out runs/2026-11-24
    """
    _arrow_memory_pool()


def _arrow_memory_pool():
    """Arrow's jemalloc pool for the whole command, unless ARROW_DEFAULT_MEMORY_POOL names one: it keeps freed
    memory for reuse instead of faulting it in again (docs/performance.md, "Why the code is the way it is")."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowNotImplementedError):
        pass


for _group in (night, policy, reports, nightly):
    for _command in _group.COMMANDS:
        main.add_command(_command)


def entry() -> None:
    """The installed `shakers-rules` command (setup.cfg's console script): `main`, exiting as Python does."""
    main()
