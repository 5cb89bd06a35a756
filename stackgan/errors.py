"""The base class of every error the project raises on purpose.

Each known error (bad config key, invalid data, corrupt shard or network file, refused
pickle, unusable tracking store) also derives from :class:`StackGANError`, so that the
command-line layer (``stackgan.cli.common``) can turn all of them into one line naming the
file, key or line, with exit code 2, without importing the modules that define them.
"""

from __future__ import annotations


class StackGANError(Exception):
    """A problem the project detected and can explain in one line (not a bug)."""
