"""Fixtures shared by the command-line tests."""
import pytest


@pytest.fixture
def text_file(tmp_path):
    """A small UTF-8 text file to train on."""
    p = tmp_path / "data.txt"
    p.write_text("a small text for a small model. " * 30 + "the end.\n", encoding="utf-8")
    return p
