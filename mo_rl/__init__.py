"""mo-rl: multi-objective RL post-training of language models, methods side by side."""

__version__ = "0.1.0"
