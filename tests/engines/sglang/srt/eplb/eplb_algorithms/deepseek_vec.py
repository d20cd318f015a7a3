"""Fake SGLang vectorised module (present so the adapter can list it as a source)."""
