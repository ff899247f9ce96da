"""The one exception type the project raises for bad input; ``cli.py`` turns it into one line."""


class MoRLError(Exception):
    """Bad input or an unusable state. The message names the bad value and what is allowed."""


class RewardFailure(MoRLError):
    """A reward function failed under ``trainer.fail_fast``; names the objective and keeps the failure's text."""

    def __init__(self, objective: str, message: str):
        super().__init__(f"objective {objective!r} {message}")
        self.objective, self.message = objective, message


def choice_error(what: str, value, allowed) -> MoRLError:
    """Build the standard "unknown X 'v'; allowed: a, b, c" error."""
    allowed = ", ".join(str(a) for a in allowed)
    return MoRLError(f"unknown {what} {value!r}; allowed: {allowed}")
