"""User-facing errors.

Every problem caused by the user's input (a missing file, an unknown name, a bad parameter, an .h5 without
the datasets an analyzer needs) is raised as :class:`ReprscopeError`. The CLI turns it into one line on
stderr and exit code 2; library callers get an ordinary exception with the same message.
"""


class ReprscopeError(Exception):
    """Bad usage or bad input: one clear sentence saying what was wrong and what to do."""


def unknown_name(kind: str, name: str, available) -> ReprscopeError:
    """The standard message for a name that is not in a registry."""
    avail = ", ".join(sorted(available)) or "(none registered)"
    return ReprscopeError(f"unknown {kind} '{name}'; available: {avail}")
