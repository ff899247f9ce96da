"""Policy loading (from_pretrained only) and the embedded tiny model built offline."""

from mo_rl.models.load import load_policy

__all__ = ["load_policy"]
