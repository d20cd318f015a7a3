"""The ``eplb-spec`` command line: arguments checked and turned into calls of the kit
(``properties``), the oracle and the studies. Nothing else lives here."""
