"""Analysis of run directories: Pareto metrics (``pareto``), comparison tables (``compare``), plots, and the two
commands that sample a policy, ``evaluate`` (``mo-rl eval``) and ``diagnose``.

``compare`` and what it uses import no training, rollout, pipeline or model code: they read only what
``mo_rl.results`` wrote on disk (``tests/test_imports.py`` holds them to it). ``evaluate`` and ``diagnose`` sample
through the same rollout-and-score pipeline as training (``mo_rl.pipeline``).
"""
