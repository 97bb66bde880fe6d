"""Diagnostics and evaluation: reward-model checks (``reward-eval``), agent evaluation and the report."""
