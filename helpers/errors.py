"""Exception types of the project. Each message names the file and the problem."""


class ProjectError(Exception):
    """Base class: command-line tools print its message as one line and exit non-zero."""


class DataError(ProjectError, ValueError):
    """A data folder or file is missing, unreadable or inconsistent."""


class DownloadError(ProjectError, RuntimeError):
    """An archive could not be fetched, verified or extracted."""


class WeightsError(ProjectError, RuntimeError):
    """Encoder weights were asked for but cannot be had."""


class RunStateError(ProjectError, ValueError):
    """A run folder's saved training cannot be resumed: other settings, or an unreadable file."""


class TrainingDiverged(ProjectError, ArithmeticError):
    """The training loss became NaN or infinite; the message names the epoch and the batch."""
