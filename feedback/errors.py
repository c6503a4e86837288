"""The one exception type a user ever sees from the preference store."""

from __future__ import annotations


class FeedbackError(Exception):
    """Bad input, unknown user, duplicate name, malformed import line, someone else's chat.

    The message is one line that says what to do; the CLI prints `str(err)` and exits 1.
    """


class StoreBusyError(FeedbackError):
    """The database could not take a write in time (locked, or the connection failed).

    Nothing of that write was stored; the same call can simply be made again.
    """
