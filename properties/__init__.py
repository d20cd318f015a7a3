"""Hypothesis strategies, properties and the gate for any EPLB implementation."""
