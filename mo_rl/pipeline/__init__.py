"""The rollout-and-score pipeline that training, ``mo-rl eval`` and ``mo-rl diagnose`` all sample through: task rows
-> prompts -> engine -> reward functions (``rollout_score.py``), over one process or many (``parallel.py``).
Below ``train`` and ``analysis``, above ``rollout``, ``rewards`` and ``tasks``."""
