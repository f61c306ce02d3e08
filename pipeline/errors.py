"""Errors a user can act on. The message of each is one or two sentences that name the
problem (file, parameter, source) and what to do; the CLI prints it without a traceback."""


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class DataError(PipelineError, ValueError):
    """A data file is malformed: bad IDX structure, wrong checksum, counts that disagree."""


class DownloadError(PipelineError):
    """No source could provide a verified copy of a dataset file."""


class CheckpointError(PipelineError):
    """A checkpoint or processed HDF5 file is missing, damaged or not ours."""


class ParameterError(PipelineError, ValueError):
    """A parameter value is invalid; raised before any work or any file is written."""


class TrainingError(PipelineError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


class GradientCheckError(PipelineError):
    """Backpropagation disagrees with the numerical gradient."""


class StorageError(PipelineError):
    """A location cannot be used: an unreachable store, a missing bucket, refused access, or
    content that no longer matches the record that vouches for it."""
