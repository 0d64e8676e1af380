"""``hil flash`` and ``hil provision``: what to write, gathered and checked; the writing is
`hil.link.flasher.Flasher`'s (skip-unchanged, verify, one retry on a rig failure).

Firmware comes from a manifest (``--manifest``), a recipe of the virtual rig's images
(``--recipe``), or files named as esptool's build output names them, ``FILE@OFFSET``.
Provisioning is built from the command line and from secrets that never pass through it:
passwords come from environment variables or files, PEM material from files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from hil.bench.state import BenchInputError
from hil.device.contract import parse_broker_uri
from hil.device.settings import Provisioning, provisioning_image
from hil.firmware.catalog import FirmwareError, cached_build, load_manifest, load_recipes
from hil.images.layout import LAYOUT, FlashFile
from hil.link.flasher import ProgressCallback
from hil.secret import optional_secret


# -- what to flash ------------------------------------------------------------------------
def parse_item(text: str) -> FlashFile:
    """``build/app.bin@0x10000`` → FlashFile; BenchInputError naming the fix otherwise."""
    path, sep, offset_text = text.rpartition("@")
    if not sep or not path:
        raise BenchInputError(f"{text!r}: write FILE@OFFSET, e.g. build/app.bin@0x10000")
    try:
        offset = int(offset_text, 0)
    except ValueError:
        raise BenchInputError(f"{text!r}: offset {offset_text!r} is not a number; write e.g. app.bin@0x10000") from None
    file = Path(path)
    if file.is_dir():
        raise BenchInputError(f"{text!r}: {file} is a directory; name the image file in it (e.g. {file}/app.bin)")
    if not file.is_file():
        raise BenchInputError(f"{text!r}: {file} does not exist; build it first or fix the path")
    if offset < 0:
        raise BenchInputError(f"{text!r}: a negative offset ({offset_text}) is not a place in flash; write e.g. app.bin@0x10000")
    return FlashFile(offset, file)


def recipe_files(name: str) -> tuple[list[FlashFile], str]:
    """The virtual rig's images for recipe ``name`` (built once into the cache): bootloader,
    partition table, otadata and the app, laid out by `hil.images.layout`."""
    try:
        book = load_recipes()
        recipe = book.get(name)
        images = cached_build(book, [recipe.name])
    except FirmwareError as exc:
        raise BenchInputError(f"--recipe: {exc}") from None
    return list(LAYOUT.flash_set(images / f"{recipe.name}.bin", images).files), recipe.version


def manifest_files(path: Path) -> tuple[list[FlashFile], str]:
    try:
        manifest = load_manifest(path)
    except FirmwareError as exc:
        raise BenchInputError(str(exc)) from None
    return list(manifest.flash), manifest.version


def files_to_flash(
    manifest: str | None, recipe: str | None, items: Sequence[str]
) -> tuple[list[FlashFile], str | None]:
    """Exactly one source: a manifest, a recipe, or FILE@OFFSET items."""
    given = sum(bool(x) for x in (manifest, recipe, items))
    if given != 1:
        raise BenchInputError(
            "say what to flash, one way: --manifest FILE, --recipe NAME, or FILE@OFFSET ... "
            "(e.g. hil flash --recipe baseline)"
        )
    if manifest:
        return manifest_files(Path(manifest))
    if recipe:
        return recipe_files(recipe)
    return [parse_item(text) for text in items], None


# -- progress -----------------------------------------------------------------------------
@contextmanager
def progress_bar(console: Console) -> Iterator[ProgressCallback]:
    """A rich progress bar per file, fed by the Flasher's ``progress(name, done, total)``."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(Path(name).name, total=total)
            bar.update(tasks[name], completed=done)

        yield update


# -- provisioning -------------------------------------------------------------------------
@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from: an environment variable or a file (never the command line)."""

    env: str | None = None
    file: Path | None = None
    explicit: bool = False
    """The variable was named by the user (not the default)."""

    def read(self, what: str, environ: Mapping[str, str], *, required: bool = False) -> tuple[str | None, str]:
        """The secret (None if not given) and a description of its source, for the output.
        An empty or unset variable is refused when ``required``, and always when it was
        named on the command line (``explicit``): a typo must not flash a device without it."""
        if self.file is not None:
            try:
                return self.file.read_text().rstrip("\r\n"), f"from {self.file}"
            except OSError as exc:
                raise BenchInputError(f"{what} file {self.file}: {exc.strerror}") from None
        if self.env and environ.get(self.env):
            return environ[self.env], f"from ${self.env}"
        if self.env and (required or self.explicit):
            raise BenchInputError(
                f"{what}: ${self.env} is not set; export it, or give {what}-file FILE "
                "(an empty file for an open network)"
            )
        return None, "not set"


def _pem(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BenchInputError(f"{what} {path}: {exc.strerror}") from None
    if "-----BEGIN " not in text:
        raise BenchInputError(f"{what} {path}: no PEM block in it (expected -----BEGIN ...)")
    return text


@dataclass(frozen=True)
class ProvisionRequest:
    device_id: str
    broker: str | None = None
    wifi_ssid: str | None = None
    wifi_password: SecretSource = SecretSource("HIL_WIFI_PASSWORD")
    mqtt_user: str | None = None
    mqtt_password: SecretSource = SecretSource("HIL_MQTT_PASSWORD")
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    ota_pubkey_file: str | None = None
    config: str | None = None
    bench_broker: str | None = None  # "plain" | "tls" | "mtls": take URI and identity from hil broker up
    state_dir: Path | None = None


def _from_bench_broker(request: ProvisionRequest) -> dict[str, str | None]:
    from hil.bench import broker as bench_broker

    assert request.state_dir is not None and request.bench_broker is not None
    running = bench_broker.status(request.state_dir)
    if not running.alive:
        raise BenchInputError(f"--bench-broker: no broker is up in {request.state_dir}; run 'hil broker up' first")
    urls = running.record["urls"]
    if request.bench_broker not in urls:
        raise BenchInputError(f"--bench-broker {request.bench_broker}: the bench broker has {', '.join(urls)}")
    accounts = json.loads(Path(running.record["credentials_file"]).read_text())
    account = accounts.get(request.device_id)
    if account is None or request.device_id == running.record.get("observer_user"):
        raise BenchInputError(
            f"--bench-broker: the bench broker has no account for {request.device_id!r} "
            f"(it has {', '.join(running.record['devices'])}); 'hil broker up --device {request.device_id}'"
        )
    mtls = request.bench_broker == "mtls"
    return {
        "uri": urls[request.bench_broker],
        "user": None if mtls else account["username"],
        "password": None if mtls else account["password"],
        "ca": running.record["ca_file"] if request.bench_broker != "plain" else None,
        "cert": account["client_cert_file"] if mtls else None,
        "key": account["client_key_file"] if mtls else None,
    }


def provisioning(
    request: ProvisionRequest, environ: Mapping[str, str] | None = None
) -> tuple[Provisioning, dict[str, Any], list[str]]:
    """The Provisioning, its config, and lines describing it with every secret left out."""
    env = os.environ if environ is None else environ
    from hil.bench.broker import device_id_problem

    problem = device_id_problem(request.device_id)
    if problem:
        raise BenchInputError(f"--device-id {request.device_id!r}: {problem}")
    uri, user = request.broker, request.mqtt_user
    password, password_from = request.mqtt_password.read("--mqtt-password", env)
    ca_path, cert_path, key_path = request.ca_file, request.client_cert_file, request.client_key_file
    if request.bench_broker is not None:
        if request.broker is not None:
            raise BenchInputError("give --broker or --bench-broker, not both")
        taken = _from_bench_broker(request)
        uri, user, password = taken["uri"], taken["user"], taken["password"]
        password_from = "from the bench broker's credentials file" if password else "not set"
        ca_path, cert_path, key_path = ca_path or taken["ca"], cert_path or taken["cert"], key_path or taken["key"]
    if uri is None:
        raise BenchInputError("--broker URI is required (mqtt://HOST:PORT or mqtts://HOST:PORT), or --bench-broker")
    parsed = parse_broker_uri(uri)
    if parsed is None:
        raise BenchInputError(f"--broker {uri!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
    ca = _pem(ca_path, "--ca-file")
    if parsed.tls and ca is None:
        raise BenchInputError(f"--broker {uri}: TLS needs the broker's CA; give --ca-file")
    if (cert_path is None) != (key_path is None):
        raise BenchInputError("--client-cert-file and --client-key-file go together (mutual TLS)")
    wifi_pass, wifi_from = request.wifi_password.read("--wifi-password", env, required=request.wifi_ssid is not None)
    config: dict[str, Any] = {}
    if request.config:
        try:
            config = json.loads(request.config)
        except ValueError as exc:
            raise BenchInputError(f"--config {request.config!r}: not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise BenchInputError('--config: a JSON object of §5 settings, e.g. \'{"measurement_interval_s": 5}\'')
    try:
        prov = Provisioning(
            device_id=request.device_id,
            wifi_ssid=request.wifi_ssid,
            wifi_pass=optional_secret(wifi_pass),
            mqtt_uri=uri,
            mqtt_user=user,
            mqtt_pass=optional_secret(password),
            ca_cert=ca,
            client_cert=_pem(cert_path, "--client-cert-file"),
            client_key=optional_secret(_pem(key_path, "--client-key-file")),
            ota_pubkey=_pem(request.ota_pubkey_file, "--ota-pubkey-file"),
        )
        provisioning_image(prov, config)  # every value checked before a port is opened
    except ValueError as exc:  # NvsError is one too
        raise BenchInputError(f"provisioning: {exc}") from None
    described = [
        f"device id      {prov.device_id}",
        f"broker         {uri}" + (f" (user {user})" if user else ""),
        f"mqtt password  {'set ' + password_from if password else 'not set'}",
        f"wifi           {request.wifi_ssid or '(none)'}; password {'set ' + wifi_from if wifi_pass else 'not set'}",
        f"ca / client    {ca_path or '-'} / {cert_path or '-'} (key {'set' if key_path else '-'})",
    ]
    if config:
        described.append(f"config         {json.dumps(config)}")
    return prov, config, described


def write_image(path: Path, prov: Provisioning, config: Mapping[str, Any]) -> Path:
    """The NVS image to a file (0600: it holds the secrets) instead of a board."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(provisioning_image(prov, config))
    return path

