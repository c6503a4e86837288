"""Ordered, hand-written schema revisions (`NNNN_what.py`)."""
