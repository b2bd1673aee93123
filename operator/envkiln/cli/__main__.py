"""`python -m envkiln.cli`: the `envkiln` command."""

import sys

from envkiln.cli.main import main

sys.exit(main())
