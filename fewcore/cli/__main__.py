"""``python -m fewcore.cli``: the ``fewcore`` command without the console script."""

import sys

from fewcore.cli import main

sys.exit(main())
