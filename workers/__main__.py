"""`python -m workers`: a process that only executes sagas (same as `saga worker`)."""

import sys

from workers.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
