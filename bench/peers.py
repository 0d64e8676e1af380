"""The peers the benches measure ours against: pytest-embedded, in a venv of its own.

Why a venv of its own: pytest-embedded's plugin loads into every pytest run where it is
installed (autouse fixtures, a multiprocessing manager process per session, a ``dut``
fixture of its own), so it must not land in the project's environment. The benches run
it as its users do: ``pytest`` in a subprocess, in an environment that has it, against a
test file of its own outside this project (so our conftest and plugin stay out of it).

The versions are locks/bench.txt (the ``bench`` extra of pyproject.toml, locked by
``bash .ci/lock``); esptool and pytest are pinned
to the ones this project runs, so both sides flash with the same esptool.

Also here: an ESP-IDF-style build directory (``flasher_args.json``) for our images,
which is what pytest-embedded-idf flashes from.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hil.firmware.catalog import cache_root  # noqa: E402

LOCKS = ROOT / "locks"


def locked(lock: Path, name: str) -> str:
    """One pin of a lock with its hashes (the lines from ``name==`` to the next pin)."""
    lines = lock.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}=="))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        block.append(line)
    return "\n".join(block) + "\n"


def requirements(*, our_pyserial: bool = False) -> list[str]:
    """The peers' venv as requirements texts installed one after the other, each pinned
    with hashes: locks/bench.txt (the bench extra with the project's own esptool and
    pytest, so the comparison is of the frameworks), and for the second venv this
    environment's pyserial-labgrid pin from locks/dev.txt, installed over pyserial's
    ``serial`` (both install it: the last one wins)."""
    steps = [(LOCKS / "bench.txt").read_text()]
    if our_pyserial:
        steps.append(locked(LOCKS / "dev.txt", "pyserial-labgrid"))
    return steps


def has_our_pyserial() -> bool:
    """Whether this environment's ``serial`` is pyserial-labgrid (the labgrid extra brings
    it: pyserial 3.5 with RFC 2217 fixes, among them no reconfiguration of the port when
    only the read timeout changes), not the stock pyserial 3.5 a pytest-embedded user has."""
    try:
        metadata.version("pyserial-labgrid")
    except metadata.PackageNotFoundError:
        return False
    return True


def peers_python(*, quiet: bool = False, our_pyserial: bool = False) -> Path:
    """The interpreter of the peers' venv, created and installed from the locks if needed.
    ``our_pyserial``: a second venv whose ``serial`` is this environment's pyserial-labgrid."""
    steps = requirements(our_pyserial=our_pyserial)
    digest = hashlib.sha256("\n".join(steps).encode()).hexdigest()[:16]
    venv = cache_root() / "bench" / ("peers-venv-our-pyserial" if our_pyserial else "peers-venv")
    python = venv / "bin" / "python"
    stamp = venv / "installed.txt"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    if not quiet:
        print(f"installing the peers into {venv} from locks/bench.txt (once)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for number, text in enumerate(steps):
        lock = venv / f"requirements-{number}.txt"
        lock.write_text(text)
        later = ["--force-reinstall", "--no-deps"] if number else []
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--require-hashes", *later, "-r", str(lock)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"cannot install the peers from {lock}:\n{result.stdout}{result.stderr}")
    stamp.write_text(digest + "\n")
    return python


def peer_versions(python: Path) -> str:
    code = (
        "from importlib.metadata import version as v; "
        "print(', '.join(f'{n} {v(n)}' for n in ('pytest-embedded', 'pytest-embedded-serial-esp', "
        "'pytest-embedded-idf', 'esptool', 'pytest', 'pexpect', 'pyserial')) + "
        "', serial ' + __import__('serial').__version__)"
    )
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def idf_build_dir(firmware: Path, out: Path, app: str = "baseline.bin") -> Path:
    """An ESP-IDF v5 build directory for our images: the files where ``idf.py build``
    puts them and the ``flasher_args.json`` it writes (what pytest-embedded-idf flashes
    from). Flash mode, frequency and size are the ones in our ``flash_args``, so esptool
    rewrites the bootloader header with the values it already has. Returns the app path
    (pass it as ``--app-path``; the build dir is its ``build``)."""
    lines = (firmware / "flash_args").read_text().split("\n")
    options = shlex.split(lines[0])
    settings = {
        options[i].removeprefix("--").replace("-", "_"): options[i + 1]
        for i in range(0, len(options), 2)
    }
    placed = {
        "bootloader.bin": ("bootloader", "bootloader/bootloader.bin"),
        "partition-table.bin": ("partition-table", "partition_table/partition-table.bin"),
        "ota_data_initial.bin": ("otadata", "ota_data_initial.bin"),
        app: ("app", "app.bin"),
    }
    build = out / "build"
    files: dict[str, str] = {}
    args: dict[str, object] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        offset, name = line.split()
        if name == "baseline.bin":
            name = app
        key, where = placed[name]
        (build / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(firmware / name, build / where)
        files[offset] = where
        args[key] = {"offset": offset, "file": where, "encrypted": "false"}
    flasher_args = {
        "write_flash_args": [
            "--flash_mode", settings["flash_mode"],
            "--flash_size", settings["flash_size"],
            "--flash_freq", settings["flash_freq"],
        ],
        "flash_settings": settings,
        "flash_files": files,
        **args,
        "extra_esptool_args": {"after": "hard_reset", "before": "default_reset", "stub": True, "chip": "esp32c3"},
    }  # fmt: skip
    (build / "flasher_args.json").write_text(json.dumps(flasher_args, indent=4))
    return out
