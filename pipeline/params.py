"""The parameter types of the tasks: each value is checked once, wherever it comes from (a
flag, luigi.cfg, Python), and a bad one is a one-line ParameterError naming it."""

import datetime
import math
import re

import luigi
from luigi.parameter import OptionalParameterMixin

from pipeline import storage
from pipeline.download import validate_dataset_name
from pipeline.errors import ParameterError

def from_config(section, name):
    """A parameter's luigi.cfg place: [section] name."""
    return {"section": section, "name": name}


class _Checked:
    """A parameter that knows its name, for one-line errors that say which value is wrong."""

    name = "value"

    def __set_name__(self, owner, name):
        self.name = name
        getattr(super(), "__set_name__", lambda *_: None)(owner, name)  # luigi < 3.8 has none

    def invalid(self, x, allowed):
        return ParameterError(f"invalid {self.name}={x}: must be {allowed} (check the command line and luigi.cfg)")


class WholeNumber(_Checked, luigi.IntParameter):
    """A whole number from minimum to maximum; anything else (also 50.7 or true) is a one-line
    ParameterError."""

    def __init__(self, *args, minimum=1, maximum=None, **kwargs):
        self.minimum, self.maximum = minimum, maximum
        super().__init__(*args, **kwargs)

    def parse(self, x):
        return self.normalize(x)

    def normalize(self, x):
        value = _whole_number(x)
        if value is None or value < self.minimum or (self.maximum is not None and value > self.maximum):
            bound = f" and <= {self.maximum}" if self.maximum is not None else ""
            raise self.invalid(x, f"a whole number >= {self.minimum}{bound}")
        return value


class Number(_Checked, luigi.FloatParameter):
    """A finite number > 0; anything else is a one-line ParameterError."""

    def parse(self, x):
        return self.normalize(x)

    def normalize(self, x):
        value = _number(x)
        if value is None or value <= 0:
            raise self.invalid(x, "a number > 0")
        return value


class Choice(_Checked, luigi.Parameter):
    """One of a few words."""

    def __init__(self, *args, choices, **kwargs):
        self.choices = tuple(choices)
        super().__init__(*args, **kwargs)

    def normalize(self, x):
        if x not in self.choices:
            raise self.invalid(x, " or ".join(self.choices))
        return x


class DatasetName(luigi.Parameter):
    """A dataset name, which becomes a directory under data/ and artifacts/."""

    def normalize(self, x):
        validate_dataset_name(x)
        return x


class RunDate(_Checked, OptionalParameterMixin, luigi.DateParameter):
    """An optional date (YYYY-MM-DD), as luigi's range tools pass it."""

    expected_type = datetime.date

    def parse(self, x):
        if isinstance(x, str) and x:
            try:
                if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", x):
                    raise ValueError(x)
                return datetime.date.fromisoformat(x)
            except ValueError:
                raise self.invalid(x, "a date like 2026-11-22 (YYYY-MM-DD)") from None
        return super().parse(x)

    def normalize(self, x):
        if isinstance(x, str):
            x = self.parse(x)
        if x is not None and not isinstance(x, datetime.date):
            raise self.invalid(x, "a date like 2026-11-22 (YYYY-MM-DD)")
        return super().normalize(x)


class NumberList(_Checked, luigi.OptionalListParameter):
    """An optional list of numbers > 0 (whole ones when `whole`, from minimum to maximum)."""

    def __init__(self, *args, whole=False, minimum=1, maximum=None, **kwargs):
        self.whole, self.minimum, self.maximum = whole, minimum, maximum
        super().__init__(*args, **kwargs)

    def normalize(self, x):
        if x is None:
            return None
        items = list(x) if isinstance(x, (list, tuple)) else None
        kind = f"whole numbers >= {self.minimum}" if self.whole else "numbers > 0"
        values = [(_whole_number(v) if self.whole else _number(v)) for v in items or []]
        too_large = self.maximum is not None and any(v is not None and v > self.maximum for v in values)
        if not items or too_large or any(v is None or (v < self.minimum if self.whole else v <= 0) for v in values):
            raise self.invalid(list(x) if isinstance(x, tuple) else x, f"a non-empty list of {kind}, like [50, 100]")
        return tuple(values)


def _whole_number(x):
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, str) and x.strip().lstrip("+-").isdigit():
        return int(x)
    return None


def _number(x):
    if isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class sources(luigi.Config):
    """[sources] in luigi.cfg: where DownloadDataset looks, and how patiently."""

    local_dirs = luigi.ListParameter(
        default=["/usr/share/datasets/{dataset}"],
        description="Local directories searched before any mirror; {dataset} is replaced by the name.")
    timeout = Number(default=30.0, description="Seconds before a silent connection is given up.")
    retries = WholeNumber(default=3, description="Tries per mirror for transient errors (reset, 5xx).")


class Directory(_Checked, luigi.Parameter):
    """A local directory, or s3://bucket/prefix on any S3-compatible store (needs boto3)."""

    def normalize(self, x):
        location = storage.parse(x, what=self.name)
        storage.require_backend(location)
        return location


