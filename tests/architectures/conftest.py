import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread_everywhere(single_thread):
    """Every architecture test module runs on one torch thread (tests/conftest.py: single_thread)."""
    yield
