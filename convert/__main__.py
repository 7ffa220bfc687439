"""`python -m jet_nemotron_convert ...` (or `python -m convert` in a checkout) is `jet-nemotron ...`."""

import sys

from .cli import main

sys.exit(main())
