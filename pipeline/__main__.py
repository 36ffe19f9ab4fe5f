"""`python -m pipeline` is the `pixverse-batch` command."""

import sys

from pipeline.cli import main

sys.exit(main())
