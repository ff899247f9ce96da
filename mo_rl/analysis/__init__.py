"""Read-only analysis of run directories: Pareto metrics (``pareto``), comparison tables (``compare``), plots.

Nothing here imports training, rollout or model code: it reads only what ``mo_rl.results`` wrote on disk.
"""
