"""Argilla: the local stack, the pairs outbox, the sync, annotator agreement."""
