"""Reward functions: a registry of named objectives (TRL signature), ``module:function`` loading, scoring.

Importing this package registers the built-in rewards (``builtin``: the synthetic tasks'; ``real``: math, code and
toolcall); ``load_reward_modules`` imports a user's modules so that their ``@register_reward`` names resolve.
"""

from mo_rl.rewards.registry import available_rewards, get_reward, load_reward_modules, register_reward
from mo_rl.rewards import builtin, real  # noqa: E402,F401  (register the built-in rewards)

__all__ = ["available_rewards", "get_reward", "load_reward_modules", "register_reward"]
