"""Fixtures shared by the tests."""
import pytest


@pytest.fixture
def text_file(tmp_path):
    """A small UTF-8 text file to train on."""
    p = tmp_path / "data.txt"
    p.write_text("a small text for a small model. " * 30 + "the end.\n", encoding="utf-8")
    return p


@pytest.fixture
def threads():
    """``set_row_threads``, with the row-thread setting restored after the test."""
    from revtrain import _threads
    old = _threads.set_row_threads(None)
    _threads.set_row_threads(old)
    yield _threads.set_row_threads
    _threads.set_row_threads(old)
