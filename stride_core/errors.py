"""Exceptions a user can cause. The CLI and dashboard print their message as one line."""


class StrideError(Exception):
    """Base class for errors caused by input or state a user controls; the message says what to do."""


class CorpusError(StrideError):
    """A corpus file or corpus name is unusable."""


class ModelError(StrideError):
    """A model directory cannot be loaded safely."""


class RunError(StrideError):
    """A run is missing, incomplete, or does not match the requested arguments."""


class InputError(StrideError):
    """A prompts, benchmark or target file is unusable."""
