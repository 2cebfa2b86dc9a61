"""`python -m saga_cli ...` is the `saga` command."""

import sys

from saga_cli.main import main

sys.exit(main())
