"""The `shakers-rules` command: one module per command group, assembled in processor.cli.main."""
