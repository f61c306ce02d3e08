"""The pipeline's logger: a child of luigi's, so its lines go wherever luigi sends its own, once.

The pipeline logs to "luigi-interface.pipeline" and adds no handler to it. Where luigi.cfg says
[core] no_configure_logging (the shipped file does), install() gives "luigi-interface" one
stderr handler with time and level; otherwise luigi's own set-up or a logging_conf_file rules.
A user's error is logged as its one-line message instead of a traceback.
"""

import errno
import logging
import os
import select
import sys

from pipeline.errors import PipelineError

logger = logging.getLogger("luigi-interface.pipeline")
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def user_message(error):
    """The one-line message of an error a user can act on (one the pipeline raises on purpose,
    or the system's "disk full" / "not allowed" when writing), or None for a bug."""
    cause = error
    while cause is not None and not isinstance(cause, PipelineError):
        cause = cause.__cause__ or cause.__context__  # luigi re-raises a parameter's error from its own
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    if isinstance(error, OSError) and error.errno in USER_ERRNOS:
        where = f" {error.filename}" if error.filename else ""
        return (f"cannot write{where}: {os.strerror(error.errno)}; free some space or fix the permissions "
                f"and rerun (files already written are intact)")
    return None


class ConciseErrors(logging.Filter):
    """Replaces the traceback of a record about a user's error with its one-line message."""

    def filter(self, record):
        text = record.getMessage() if isinstance(record.msg, str) else ""
        if "method:\nTraceback" in text:  # luigi's scheduling error: a traceback as text; keep its last line
            head, _, trace = text.partition("\nTraceback")
            last = trace.strip().splitlines()[-1]
            if last.startswith(("pipeline.errors.", "luigi.parameter.ParameterException")):
                name, _, message = last.partition(": ")
                record.msg, record.args = f"{head} {name.rsplit('.', 1)[-1]}: {message}", None
            return True
        message = user_message(record.exc_info[1]) if record.exc_info else None
        if message:
            record.msg = f"{record.getMessage()}: {message}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


FORMAT = "%(asctime)s %(levelname)s: %(message)s"


def install():
    """Attach the filter to luigi's logger, and the stderr handler where luigi.cfg asks for it (once)."""
    import luigi.configuration

    luigi_logger = logging.getLogger("luigi-interface")
    if not any(isinstance(f, ConciseErrors) for f in luigi_logger.filters):
        luigi_logger.addFilter(ConciseErrors())
    config = luigi.configuration.get_config()
    if config.getboolean("core", "no_configure_logging", False) and not luigi_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        luigi_logger.addHandler(handler)
        luigi_logger.setLevel(config.get("core", "log_level", "INFO").upper())


def stdout_reader_gone():
    """True when stdout is a pipe whose reader has closed it (`| head -1` read enough), and then
    stdout is pointed at /dev/null, so no further write, nor the flush at exit, fails again.
    False (stdout untouched) when stdout is fine: a broken pipe elsewhere is a real failure."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no real stdout (captured, closed): nothing to tell
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone
