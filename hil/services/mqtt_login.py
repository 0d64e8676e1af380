"""An observer's login to a broker, in a file a person's tools can use.

A rig kept by ``--keep-on-failure`` hands its test observer's login to whoever attaches.
`write_login` writes it (mode 0600, in a 0700 dir) as *mosquitto_sub's options file*: one
option a line (``-h``, ``-p``, ``-u``, ``-P``, ``--cafile``, ``--cert``, ``--key``), named
``mosquitto_sub``. So one file serves both::

    hil mqtt watch --credentials DIR/mosquitto_sub --device ID
    XDG_CONFIG_HOME=DIR mosquitto_sub -t 'esp32/ID/#' -v

(mosquitto_sub reads ``$XDG_CONFIG_HOME/mosquitto_sub`` as default options), and the
password is never on a command line, where ``ps`` would show it. `read_login` reads that
form, and also the bench broker's ``credentials.json`` (``hil broker up``), taking its
observer account. Neither ever puts the password in an error message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hil.device.contract import parse_broker_uri
from hil.secret import Secret, write_private
from hil.services.broker import OBSERVER_USER
from hil.services.mqtt import MqttObserver, Received

LOGIN_FILE = "mosquitto_sub"
"""The file's name: what mosquitto_sub looks for in ``$XDG_CONFIG_HOME``."""


class LoginError(ValueError):
    """A login file that cannot be used; the message names the file and line, never a secret."""


@dataclass(frozen=True)
class BrokerLogin:
    """Where a broker is and how to log in (the password a `Secret`: ``***`` in any repr)."""

    host: str
    port: int
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None  # given: TLS (as mosquitto_sub does with --cafile)
    cert_file: Path | None = None  # mutual TLS: the client's identity
    key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def observer(
        self,
        *,
        subscribe: str | Sequence[str],
        on_receive: Callable[[Received], None] | None = None,
        keep: bool = True,
    ) -> MqttObserver:
        """A fresh (clean-session) observer logged in with this login."""

        def read(path: Path | None, what: str) -> str | None:
            if path is None:
                return None
            try:
                return path.read_text()
            except OSError as exc:
                raise LoginError(f"{what} {path}: {exc.strerror}") from None

        key = read(self.key_file, "client key")
        return MqttObserver(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            ca_pem=read(self.ca_file, "CA file"),
            client_cert_pem=read(self.cert_file, "client certificate"),
            client_key_pem=None if key is None else Secret(key),
            subscribe=subscribe,
            persistent=False,
            on_receive=on_receive,
            keep=keep,
        )


def write_login(
    directory: Path,
    *,
    host: str,
    port: int,
    username: str | None,
    password: Secret | None,
    ca_pem: str | None = None,
    client_cert_pem: str | None = None,
    client_key_pem: Secret | None = None,
) -> Path:
    """Write the login into ``directory`` (made 0700): ``mosquitto_sub`` (0600), and the CA
    and client identity it names, if any. Returns the options file's path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    lines = [
        "# The test observer's login to a hil session's broker (mode 0600; gone when the session ends).",
        "# hil mqtt watch --credentials THIS_FILE --device ID",
        "# XDG_CONFIG_HOME=THIS_DIR mosquitto_sub -t 'esp32/ID/#' -v   (mosquitto_sub reads its options here)",
        f"-h {host}",
        f"-p {port}",
    ]
    for value, what in ((username, "user name"), (password.reveal() if password else None, "password")):
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise LoginError(f"the observer's {what} is empty or holds whitespace: mosquitto_sub cannot read it")
    if username:
        lines.append(f"-u {username}")
    if password:
        lines.append(f"-P {password.reveal()}")
    if ca_pem is not None:
        lines.append(f"--cafile {(directory / 'ca.pem')}")
        (directory / "ca.pem").write_text(ca_pem)
    if client_cert_pem is not None and client_key_pem is not None:
        write_private(directory / "client.crt", client_cert_pem)
        write_private(directory / "client.key", client_key_pem)
        lines += [f"--cert {directory / 'client.crt'}", f"--key {directory / 'client.key'}"]
    # No blank line: mosquitto_sub's parser does not expect one.
    return write_private(directory / LOGIN_FILE, "\n".join(lines) + "\n")


OPTIONS = {
    "-h": "host", "--host": "host",
    "-p": "port", "--port": "port",
    "-u": "username", "--username": "username",
    "-P": "password", "--pw": "password",
    "--cafile": "ca_file", "--cert": "cert_file", "--key": "key_file",
}  # fmt: skip


def read_login(path: Path, *, broker: str | None = None, ca_file: Path | None = None) -> BrokerLogin:
    """The login in ``path``: a mosquitto_sub options file (`write_login`'s), or the bench
    broker's credentials.json (its observer account; the broker's address then comes from
    ``broker``, an mqtt(s)://HOST:PORT URL). ``broker`` overrides the file's address;
    ``ca_file`` is the CA for an mqtts:// ``broker`` when the file names none."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise LoginError(f"--credentials {path}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        found = _from_credentials_json(path, text)
    else:
        found = _from_options(path, text)
    if broker is not None:
        parsed = parse_broker_uri(broker)
        if parsed is None:
            raise LoginError(f"--broker {broker!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
        found["host"], found["port"] = parsed.host, str(parsed.port)
        if not parsed.tls:  # the URL's scheme decides: mqtt:// is plain, whatever the file says
            for key in ("ca_file", "cert_file", "key_file"):
                found.pop(key, None)
        if parsed.tls and "ca_file" not in found and ca_file is not None:
            found["ca_file"] = str(ca_file)
        if parsed.tls and "ca_file" not in found:
            raise LoginError(f"--broker {broker}: TLS needs the broker's CA (--cafile in {path})")
    if "host" not in found:
        raise LoginError(f"--credentials {path} gives no broker address: add --broker mqtt://HOST:PORT")
    return _login(path, found)


def _from_credentials_json(path: Path, text: str) -> dict[str, str]:
    try:
        accounts = json.loads(text)
        account = accounts[OBSERVER_USER]
        return {"username": str(account["username"]), "password": str(account["password"])}
    except (ValueError, KeyError, TypeError):
        raise LoginError(
            f"--credentials {path}: JSON without the {OBSERVER_USER!r} account's username and password "
            "(expected hil broker up's credentials.json)"
        ) from None


def _from_options(path: Path, text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        option, _, value = line.partition(" ")
        key = OPTIONS.get(option)
        if key is None:  # named only if it looks like an option: a stray line may be a secret
            shown = repr(option) if option.startswith("-") and len(option) < 20 else "its first word"
            raise LoginError(f"{path} line {number}: {shown} is not an option hil mqtt watch reads "
                             f"({', '.join(sorted(OPTIONS))})")  # fmt: skip
        if not value.strip():
            raise LoginError(f"{path} line {number}: {option} without a value")
        found[key] = value.strip()
    return found


def _login(path: Path, found: dict[str, str]) -> BrokerLogin:
    try:
        port = int(found.get("port", "1883"))
    except ValueError:
        raise LoginError(f"{path}: port {found['port']!r} is not a number") from None
    if not 0 < port < 65536:
        raise LoginError(f"{path}: port {port} is out of range")
    if ("cert_file" in found) != ("key_file" in found):
        raise LoginError(f"{path}: --cert and --key go together")

    def file(key: str) -> Path | None:
        value = found.get(key)
        return None if value is None else Path(value).expanduser()

    password = found.get("password")
    return BrokerLogin(
        host=found["host"],
        port=port,
        username=found.get("username"),
        password=None if password is None else Secret(password),
        ca_file=file("ca_file"),
        cert_file=file("cert_file"),
        key_file=file("key_file"),
    )


__all__ = ["LOGIN_FILE", "BrokerLogin", "LoginError", "read_login", "write_login"]
