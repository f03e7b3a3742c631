"""``python -m lmm.tracking``: the ours-vs-paper report (the same as ``python -m lmm.tracking.compare``)."""

import sys

from lmm.tracking.compare import main

sys.exit(main())
