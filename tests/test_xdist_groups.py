"""make test's two workers (pytest-xdist, --dist loadgroup) keep every test marked
xdist_group("processes") on one worker: two 2-rank torchrun launches side by side have
aborted a gloo rank. The grouping depends on pytest-xdist rewriting node ids; with a pytest it
does not work with (9.2 and pytest-xdist 3.8), the marked tests are spread silently, and this
test is the one that says so."""

import pytest

pytestmark = pytest.mark.xdist_group("processes")


def test_tests_that_start_processes_share_one_worker(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@processes"), (
        f"pytest-xdist did not group {request.node.nodeid!r}: install the pytest pyproject.toml's "
        "test extra pins")
