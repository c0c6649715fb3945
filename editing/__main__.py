"""Run the command-line interface: `python -m editing --help`."""

import sys

from .cli import main

sys.exit(main())
