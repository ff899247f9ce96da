"""The one exception type the project raises for bad input; ``cli.py`` turns it into one line."""


class MoRLError(Exception):
    """Bad input or an unusable state. The message names the bad value and what is allowed."""


def choice_error(what: str, value, allowed) -> MoRLError:
    """Build the standard "unknown X 'v'; allowed: a, b, c" error."""
    allowed = ", ".join(str(a) for a in allowed)
    return MoRLError(f"unknown {what} {value!r}; allowed: {allowed}")
