"""``python -m gpjax``: the ``gpjax`` command line (see :mod:`gpjax.cli`)."""

import sys

from gpjax.cli import main

sys.exit(main())
