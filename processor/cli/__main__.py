"""`python -m processor.cli`."""
from processor.cli.main import main

main()
