"""``python -m mpic …``: the same as the ``mpic`` console script."""

import sys

from mpic.cli import main

sys.exit(main())
