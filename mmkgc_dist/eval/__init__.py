"""Evaluation: filtered ranking and its metrics."""
