"""The suite's shared fixtures are built once only if pytest-xdist schedules by the groups that
tests/conftest.py marks: under ``--dist loadgroup`` (the README's test command) every test id must
carry its group."""
from tests.conftest import xdist_group_of


def test_this_test_runs_in_its_group(request):
    if not getattr(request.config.option, "loadgroup", False):   # set in the workers of --dist loadgroup
        return   # run alone or without xdist: no scheduling to check
    assert request.node.nodeid.endswith("@" + xdist_group_of(str(request.node.path)))
