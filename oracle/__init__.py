"""Exact answers for EPLB problems (CP-SAT and exact arithmetic). Imports only ``spec``."""
