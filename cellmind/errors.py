"""Errors a user can act on.

Every exception here carries a message that is already localized and names the value, the file or the limit
involved and what to do next. The CLI prints it as one line on stderr and exits with the class's ``exit_status``;
library code raises these and never exits the process.
"""


class CellMindError(Exception):
    """Base class of the errors the CLI reports as one line instead of a traceback."""

    exit_status = 1


class InputFormatError(CellMindError):
    """An input file is empty, binary or in a layout no reader recognizes."""

    exit_status = 65  # EX_DATAERR


class ConfigError(CellMindError):
    """A config file or a command-line flag has an unknown key or a value of the wrong type."""

    exit_status = 78  # EX_CONFIG


class MissingFileError(CellMindError):
    """A file the command needs (tokenizer, corpus, checkpoint) does not exist yet."""

    exit_status = 66  # EX_NOINPUT


class TokenizerError(CellMindError):
    """Tokenizer training or loading failed in a way the user can fix (corpus too small, wrong file)."""

    exit_status = 65


class SwarmError(CellMindError):
    """Joining or talking to the swarm failed: bad address, unreachable peers, mismatched run."""

    exit_status = 69  # EX_UNAVAILABLE


class CheckpointError(CellMindError):
    """A checkpoint is missing, truncated, corrupted or belongs to another model."""

    exit_status = 65


class DeviceMemoryError(CellMindError):
    """The device that trains or generates ran out of memory; a smaller batch or another device may fit."""

    exit_status = 75  # EX_TEMPFAIL: the same command can succeed with other settings
