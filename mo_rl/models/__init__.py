"""Policy loading (from_pretrained only) into one ``Policy`` object, and the embedded tiny model built offline."""

from mo_rl.models.load import load_policy
from mo_rl.models.policy import Policy

__all__ = ["Policy", "load_policy"]
