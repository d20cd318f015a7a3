"""A fake engine package: adapters must never execute this file."""

raise RuntimeError(f"{__name__}.__init__ ran; engine adapters must not run package __init__ files")
