"""Evaluation: batch generation, held-out metrics, eval sets, scorers, the judge, reports."""
