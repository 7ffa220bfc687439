"""`python -m convert ...` is `jet-nemotron ...`."""

import sys

from .cli import main

sys.exit(main())
