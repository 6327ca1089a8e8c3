"""The one exception type for mistakes a user can fix.

run.py prints its message alone (no traceback) and exits with status 2, so every message
must say what is wrong and what to do about it.
"""


class UserError(ValueError):
  """Bad input or configuration; the message names the fix."""
