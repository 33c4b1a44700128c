"""The one exception type for problems a user can cause and fix (bad paths, bad arguments, broken files)."""


class MMEarthError(Exception):
    """A user-facing error: the message names the input and what is wrong; the CLI prints it on one line."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (an exception, a server's message) on one line: whitespace folded, at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]
