"""Reward functions: a registry of named objectives (TRL signature), ``module:function`` loading, scoring."""

from mo_rl.rewards.registry import available_rewards, get_reward, register_reward

__all__ = ["available_rewards", "get_reward", "register_reward"]
