"""A duration of 0 where 0 cannot work is refused at start-up, naming the setting."""

from __future__ import annotations

import pytest

from server.settings import SettingsError, load_settings


def test_a_reader_grace_of_zero_is_refused() -> None:
    """The grace starts with the stream: at 0 every browser stream was cancelled before its reader came."""
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"SLUICE_BROWSER_READER_GRACE_SECONDS": "0"})

    assert str(caught.value) == (
        "setting browser.reader_grace_seconds: Input should be greater than 0 "
        "(from environment variable SLUICE_BROWSER_READER_GRACE_SECONDS)"
    )
