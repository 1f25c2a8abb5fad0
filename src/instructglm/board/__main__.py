"""``python -m instructglm.board`` (until ``board`` is a verb of the ``instructglm`` command)."""

import sys

from instructglm.board.app import main

sys.exit(main())
