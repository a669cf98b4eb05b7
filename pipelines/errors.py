"""The one exception type for mistakes a user can fix.

Anything raised as ``UserError`` is shown to people as-is (gr.Error in the UI, one ``error:`` line and exit
code 2 in the CLI). Its message must say what was wrong and what to do about it. Every other exception is a
bug: logged with a traceback and shown as a short message with a log id.
"""


class UserError(Exception):
    """A problem with the user's input or setup, explained in words a person can act on."""


class Cancelled(Exception):
    """The user asked a running job to stop. Not an error: jobs that raise it are marked cancelled."""
