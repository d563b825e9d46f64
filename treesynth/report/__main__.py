"""`python -m treesynth.report`: see treesynth/report/cli.py."""

import sys

from treesynth.report.cli import main

sys.exit(main())
