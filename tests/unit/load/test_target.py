"""Where a load run's fleet connects: an external broker's accounts for the fleet's
devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.load.errors import LoadError
from hil.load.target import CREDENTIALS_ENV, external_credentials


def test_external_brokers_take_a_credentials_file_or_one_shared_account(tmp_path: Path) -> None:
    ids = ["fleet-0000", "fleet-0001"]
    assert external_credentials(ids, "staging", "pw", {}) == {d: ("staging", "pw") for d in ids}
    assert external_credentials(ids, None, None, {}) is None
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"fleet-0000": {"username": "a", "password": "1"}}))
    with pytest.raises(LoadError, match="no account for fleet-0001"):
        external_credentials(ids, "staging", "pw", {CREDENTIALS_ENV: str(creds)})
    creds.write_text(json.dumps({d: {"username": d, "password": "x"} for d in ids}))
    assert external_credentials(ids, None, None, {CREDENTIALS_ENV: str(creds)}) == {d: (d, "x") for d in ids}
