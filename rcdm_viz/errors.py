"""User-facing errors: the CLI prints them as one line and exits non-zero."""

import reprlib

from PIL import Image, UnidentifiedImageError

# What PIL raises for a file that is not an image it can read (NotImplementedError: pixel formats it knows
# by name but cannot decode; DecompressionBombError: over its pixel limit).
UNREADABLE_IMAGE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, NotImplementedError,
                    Image.DecompressionBombError)


class RcdmVizError(ValueError):
    """A bad input from the user (a value, a path, a name); the message names the bad value."""


# An error is one terminal line: a value echoed into it (a YAML alias bomb expands to megabytes) is cut.
SHORT_LIMIT = 300


def short(value: object, limit: int = SHORT_LIMIT) -> str:
    """``str(value)`` on one line, cut to ``limit`` characters with the count of what was left off."""
    text = " ".join(str(value).split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def plain_error(exc: BaseException) -> str:
    """One line for errors that escape the checks: input nested too deeply, a size the machine cannot hold,
    a run path that is a file or that this user may not read."""
    if isinstance(exc, RecursionError):
        return "input nested too deeply (a YAML or JSON file or value?)"
    if isinstance(exc, MemoryError):
        return "not enough memory for a size asked for (lower data.resolution, widths or batch sizes)"
    if isinstance(exc, OverflowError):
        return f"a number is too large: {short(exc, 120)}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}: '{short(exc.filename or '', 200)}'"
    return short(exc)


_SHOWN = reprlib.Repr()  # keyword arguments need Python 3.12
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict = 3, 6, 6, 6
_SHOWN.maxstring, _SHOWN.maxlong, _SHOWN.maxother = 80, 40, 80


def shown(value: object) -> str:
    """A value echoed into an error, bounded before it is built: a YAML alias bomb is a list of a million
    strings, whose full repr alone would be megabytes."""
    return short(_SHOWN.repr(value), 200)
