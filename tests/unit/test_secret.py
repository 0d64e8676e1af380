"""`hil.secret`: a Secret shows ``***`` wherever Python makes text of it; its value only by
``reveal()``; files holding one are 0600 from creation."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.secret import MASK, Secret, optional_secret, reveal, secret, write_private

VALUE = "hunter2-s3cret-value"


def test_every_text_form_is_masked() -> None:
    s = Secret(VALUE)
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>30}", "%s" % s, "{}".format(s), repr([s]), repr({"k": s})]  # noqa: UP031, UP032 (every way)
    assert all(VALUE not in text for text in shown)
    assert str(s) == f"{s}" == MASK and repr(s) == "Secret('***')"


def test_a_dataclass_holding_one_shows_the_mask() -> None:
    @dataclasses.dataclass(frozen=True)
    class Access:
        user: str
        password: Secret

    assert repr(Access("u", Secret(VALUE))).endswith("Access(user='u', password=Secret('***'))")


def test_the_value_comes_out_by_reveal_only() -> None:
    assert Secret(VALUE).reveal() == VALUE
    assert reveal(Secret(VALUE)) == VALUE and reveal("plain") == "plain" and reveal(None) is None
    with pytest.raises(TypeError):
        json.dumps({"password": Secret(VALUE)})  # forgot to reveal: loud, not '***' written
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]


def test_equal_and_hashed_by_value() -> None:
    assert Secret(VALUE) == Secret(VALUE) and Secret(VALUE) == VALUE and VALUE == Secret(VALUE)  # noqa: SIM300 (both sides)
    assert Secret(VALUE) != Secret("other") and Secret(VALUE) != 5
    assert len({Secret(VALUE), Secret(VALUE), VALUE}) == 1
    assert bool(Secret(VALUE)) and not Secret("")


def test_wrapping_helpers() -> None:
    s = Secret(VALUE)
    assert secret(s) is s and secret(VALUE) == s and Secret(s) == s
    assert optional_secret(None) is None and optional_secret(VALUE) == s


@given(st.text())
def test_pickle_and_copy_keep_the_value(value: str) -> None:
    s = Secret(value)
    for other in (pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)):
        assert isinstance(other, Secret) and other.reveal() == value


def test_pytest_showlocals_shows_the_mask(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        """
        import os
        from hil.secret import Secret

        def test_fails():
            password = Secret(os.environ["PLANTED"])
            secrets = [password, Secret(os.environ["PLANTED"][::-1])]
            assert not password
        """
    )
    monkeypatch.setenv("PLANTED", VALUE)
    result = pytester.runpytest_subprocess("-l", "-p", "no:cacheprovider", f"--junitxml={pytester.path / 'j.xml'}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str() + (pytester.path / "j.xml").read_text()
    assert "password   = Secret('***')" in result.stdout.str()
    assert VALUE not in out and VALUE[::-1] not in out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("data", [b"\x00key", "text key", Secret("a secret key")])
def test_write_private_makes_a_0600_file_whatever_the_umask(tmp_path: Path, data: bytes | str | Secret) -> None:
    old = os.umask(0)
    try:
        path = write_private(tmp_path / "server.key", data)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert path.read_bytes() == (reveal(data).encode() if not isinstance(data, bytes) else data)  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]  # no temp file left


def test_write_private_replaces_a_lax_file_and_a_symlink_without_writing_through(tmp_path: Path) -> None:
    lax = tmp_path / "passwd"
    lax.write_text("old")
    lax.chmod(0o644)
    write_private(lax, "new")
    assert _mode(lax) == 0o600 and lax.read_text() == "new"
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    link = tmp_path / "nvs.bin"
    link.symlink_to(target)
    write_private(link, b"secret")
    assert not link.is_symlink() and _mode(link) == 0o600 and target.read_text() == "untouched"
