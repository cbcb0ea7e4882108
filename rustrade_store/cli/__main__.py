"""``python -m rustrade_store.cli``, as the console script."""

import sys

from .entry import main

sys.exit(main())
