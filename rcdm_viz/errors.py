"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class RcdmVizError(ValueError):
    """A bad input from the user (a value, a path, a name); the message names the bad value."""
