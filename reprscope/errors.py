"""User-facing errors.

Every problem caused by the user's input (a missing file, an unknown name, a bad parameter, an .h5 without
the datasets an analyzer needs) is raised as :class:`ReprscopeError`. The CLI turns it into one line on
stderr and exit code 2; library callers get an ordinary exception with the same message.
"""


class ReprscopeError(ValueError):
    """Bad usage or bad input: one clear sentence saying what was wrong and what to do.

    A ``ValueError``, so Python callers can catch it as one; its message speaks of arguments in library terms
    (the command line adds its own flags).

    Args:
        message: the sentence.
        arg: the library argument the problem is about (``views``, ``data`` …), by which the command line names
            its flag.
    """

    def __init__(self, message: str = "", *, arg: str | None = None):
        super().__init__(message)
        self.arg = arg


def unknown_name(kind: str, name: str, available) -> ReprscopeError:
    """The standard message for a name that is not in a registry."""
    avail = ", ".join(sorted(available)) or "(none registered)"
    return ReprscopeError(f"unknown {kind} '{name}'; available: {avail}")
