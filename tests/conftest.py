"""Shared fixtures: generated IDX datasets, loopback mirrors, a luigid. No test touches the network
beyond 127.0.0.1, and none reads the user's luigi.cfg: every parameter is passed explicitly."""

import luigi.configuration
import pytest

import servers
from fakedata import make_idx_dataset
from mirror import Mirror

# Forget any luigi.cfg that luigi found (the repo's, a user's /etc/luigi): in-process tests
# pass every parameter they depend on, and subprocess tests run in a directory of their own.
_config = luigi.configuration.get_config()
for _section in _config.sections():
    _config.remove_section(_section)


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory):
    """A learnable 600/200-image dataset in a directory, for DownloadDataset's source_dir."""
    directory = tmp_path_factory.mktemp("synthetic")
    make_idx_dataset(directory, n_train=600, n_test=200)
    return directory


@pytest.fixture(scope="session")
def resume_source(tmp_path_factory):
    """A larger learnable dataset (2400 training images) for the kill-and-resume tests."""
    directory = tmp_path_factory.mktemp("resume")
    make_idx_dataset(directory, n_train=2400, n_test=200, seed=5)
    return directory


@pytest.fixture
def mirrors():
    """Start loopback mirrors: mirrors(directory, mode) -> Mirror; all closed afterwards."""
    started = []

    def start(directory, mode="ok", target=None):
        mirror = Mirror(directory, mode, target)
        started.append(mirror)
        return mirror

    yield start
    for mirror in started:
        mirror.close()


@pytest.fixture
def luigid(tmp_path):
    """A central scheduler on 127.0.0.1 with its own state file: (port, url); shut down afterwards."""
    with servers.luigid(tmp_path) as (port, url):
        yield port, url
