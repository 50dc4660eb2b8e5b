"""Evaluation: retrieval and classification metrics (``metrics``), the protocols that embed a test split and
score it (``evaluate``), the synthetic data's attainable ceiling (``ceiling``), the paper's reported numbers
(``paper``) and the claims scored against them (``claims``).
"""
