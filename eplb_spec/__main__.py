"""``python -m eplb_spec``: the same as the ``eplb-spec`` command."""

from eplb_spec.cli import main

raise SystemExit(main())
