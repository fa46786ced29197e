"""The invoiced-connect command: argument parsing and clear failures."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from invoiced_connect import cli


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800)])
def test_durations(text, seconds):
    assert cli.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1w", "-5", "abc", "1.5h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_duration(text)


def test_env_file_is_parsed_and_bad_lines_are_named(tmp_path):
    good = tmp_path / "stack.env"
    good.write_text("# comment\nTABLE_NAME=t\n\nPUBLIC_BASE_URL = http://127.0.0.1:3000\n")
    assert cli.read_env_file(str(good)) == {"TABLE_NAME": "t", "PUBLIC_BASE_URL": "http://127.0.0.1:3000"}
    bad = tmp_path / "bad.env"
    bad.write_text("TABLE_NAME=t\nnot a pair\n")
    with pytest.raises(ValueError, match="bad.env:2"):
        cli.read_env_file(str(bad))


def test_missing_configuration_is_one_clear_line(monkeypatch, capsys, tmp_path):
    from invoiced_connect.settings import get_settings

    for name in ("TABLE_NAME", "KMS_KEY_ID", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    assert cli.main(["link", "create", "acme-1"]) == 2
    assert capsys.readouterr().err.strip() == "invoiced-connect: TABLE_NAME is not set"
    get_settings.cache_clear()


def test_missing_env_file_is_reported(capsys, tmp_path):
    assert cli.main(["--env-file", str(tmp_path / "nope.env"), "link", "create", "acme-1"]) == 2
    assert "nope.env" in capsys.readouterr().err
