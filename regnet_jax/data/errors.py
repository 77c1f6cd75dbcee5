"""Exceptions raised by the data package.

Both subclass built-in exceptions, so callers that only know Python's own types
(``except FileNotFoundError``, ``except ValueError``) still catch them.
"""


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is neither on disk nor obtainable; the message says how to get it."""


class CorruptDatasetError(ValueError):
  """A dataset file exists but its contents are not what its format promises."""
