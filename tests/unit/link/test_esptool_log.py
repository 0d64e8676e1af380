"""esptool's one process-wide logger, shared by flash jobs on several threads: each job
gets its own thread's lines and progress, and the logger is given back afterwards."""

from __future__ import annotations

import threading

from hil.link.esptool_log import capture_esptool_log


def test_esptool_output_goes_to_the_job_of_its_thread_and_the_logger_is_given_back() -> None:
    from esp_pylib.logger import EspLog, log

    before = EspLog.instance
    seen: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def job(name: str) -> None:
        with capture_esptool_log() as capture:
            barrier.wait()
            log.print(f"Connecting to {name}...", end="")
            log.print(" done")
            log.note("a [bold]note[/bold]")
            with log.progress(total=10) as progress:
                capture.on_progress = lambda done, total: seen[name].append(f"{done}/{total}")
                progress.update(4)
            barrier.wait()
            capture.flush()
            seen[name] += capture.lines

    seen.update(a=[], b=[])
    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen["a"] == ["4/10", "10/10", "Connecting to a... done", "Note: a note"]
    assert seen["b"] == ["4/10", "10/10", "Connecting to b... done", "Note: a note"]
    assert EspLog.instance is before
