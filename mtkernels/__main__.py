"""``python -m mtkernels bench ...``: the same as the ``mtkernels`` console script."""

from .cli import main

raise SystemExit(main())
