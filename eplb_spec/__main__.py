"""``python -m eplb_spec``: the same as the ``eplb-spec`` command."""

from eplb_spec.entry import main

raise SystemExit(main())
