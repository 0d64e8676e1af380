"""Files holding a secret are mode 0600 from the moment they exist, whatever the umask: the
broker's key and password file, the session's NVS image, the bench broker's credentials.

"Holding a secret" is judged by content, not by a list of names: a file that contains one
of the run's passwords, a private key, or a line of mosquitto's password file. So a new
file that starts holding one with other mode bits fails these tests without anyone having
to add its name here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import hil.session
from hil.bench.broker import cap_log
from hil.services.broker import CONNECTION_LOG_TYPES, MosquittoBroker
from hil.session import RigSession, SessionOptions

ROOT = Path(__file__).resolve().parents[2]


def secret_files(root: Path, secrets: Iterable[str]) -> Iterator[tuple[Path, int]]:
    """(path, mode) of every file under ``root`` that holds a secret: one of ``secrets``,
    a PEM private key, or mosquitto password-file lines (``user:$7$...``)."""
    texts = [s.encode() for s in secrets if s]
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"PRIVATE KEY" in data or b":$7$" in data or any(t in data for t in texts):
            yield path, stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """umask 0: a file not created 0600 on purpose would be world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("lax_umask")
def test_the_broker_writes_its_key_and_password_file_0600(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    creds = broker.add_device("dev-1")
    broker._write_config()
    broker._write_config()  # again (a restart or reload): the files are replaced, still 0600
    secrets = [creds.password.reveal(), creds.client_key_pem.reveal(), broker.observer_password.reveal()]
    found = dict(secret_files(tmp_path, secrets))
    assert {p.name for p in found} >= {"server.key", "passwd"}, found
    assert {str(p): mode for p, mode in found.items() if mode != 0o600} == {}


@pytest.mark.slow
@pytest.mark.usefixtures("lax_umask")
def test_a_sessions_secret_files_are_0600_while_they_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Looked at the moment the NVS image is on disk (while it is being flashed) and after
    setup: the run dir is 0700, and every file in it holding a secret 0600."""
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HIL_LOCK_DIR", str(tmp_path / "locks"))
    session = RigSession(SessionOptions(rigs_dir=ROOT / "rigs", log_dir=tmp_path / "logs"))
    seen: dict[Path, int] = {}
    flash = hil.session.Flasher.flash

    def flash_and_look(self: hil.session.Flasher, *args: object, **kwargs: object) -> object:
        seen.update(secret_files(session.run_dir, secrets()))
        return flash(self, *args, **kwargs)  # type: ignore[arg-type]

    def secrets() -> list[str]:
        assert session.broker is not None
        creds = session.broker.credentials(session.device_id)
        prov = session.device_provisioning()
        return [*prov.secrets(), creds.password.reveal(), creds.client_key_pem.reveal(),
                session.broker.observer_password.reveal()]  # fmt: skip

    monkeypatch.setattr(hil.session.Flasher, "flash", flash_and_look)
    try:
        session.dut()
        run_dir = session.run_dir
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        seen.update(secret_files(run_dir, secrets()))
    finally:
        session.close()
    assert {p.name for p in seen} >= {"server.key", "passwd", "nvs.bin"}, seen
    assert {str(p): oct(mode) for p, mode in seen.items() if mode != 0o600} == {}


def test_the_bench_broker_config_logs_connections_not_messages(tmp_path: Path) -> None:
    bench = MosquittoBroker(tmp_path / "bench", log_types=CONNECTION_LOG_TYPES)
    config = bench._write_config().read_text()
    assert "log_type all" not in config and "log_type debug" not in config
    assert "log_type notice" in config and "log_type subscribe" in config
    assert "protocol_log" not in bench.features  # nothing per packet to read back
    session = MosquittoBroker(tmp_path / "session")  # the per-run test broker keeps its headers
    assert "log_type all" in session._write_config().read_text() and "protocol_log" in session.features


def test_the_bench_broker_log_is_capped(tmp_path: Path) -> None:
    log = tmp_path / "mosquitto-broker.log"
    with log.open("ab") as writer:  # as mosquitto holds it: O_APPEND
        writer.write(b"x" * 100)
        writer.flush()
        assert not cap_log(log, cap=100)
        writer.write(b"y" * 10)
        writer.flush()
        assert cap_log(log, cap=100)
        assert log.stat().st_size == 0 and log.with_name(log.name + ".1").stat().st_size == 110
        writer.write(b"next line\n")  # the writer carries on at the start of the emptied file
        writer.flush()
    assert log.read_bytes() == b"next line\n"
    assert not cap_log(tmp_path / "missing.log")

