"""``python -m model_proxy.cli``: the same as the ``model-proxy`` command."""

import sys

from model_proxy.cli.commands import main

sys.exit(main())
