"""The viewer's server under hostile or careless use: idle and half-sent connections hold no
worker and are closed after the timeout, the command's numbers are checked in one line, and
a run whose slides moved is served with ``--slides``; ``make test`` says in its last line when
the browser tests were skipped."""

from __future__ import annotations

import http.client
import json
import select
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import pytest_unconfigure
from test_viewer import serving, tiny_run  # noqa: F401 (a fixture)

from vistumor.viewer.cli import main
from vistumor.viewer.run import RunFolder
from vistumor.viewer.server import ViewerApp

TILE = "/slide/tumor_001_files/9/0_0.jpeg"


def closed_by_server(sockets: list[socket.socket], within: float) -> int:
    """How many of ``sockets`` the server closed (end of stream or reset) within ``within`` s."""
    waiting, deadline = set(sockets), time.monotonic() + within
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
        for sock in ready:
            try:
                data = sock.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                waiting.discard(sock)
    return len(sockets) - len(waiting)


def workers(server) -> int:
    """The server's worker threads."""
    prefix = f"viewer-worker-{server.server_address[1]}_"
    return sum(thread.name.startswith(prefix) for thread in threading.enumerate())


def test_idle_connections_hold_no_worker(tiny_run):  # noqa: F811
    """30 connections that send nothing, on a server of 2 workers with a long timeout: a normal
    request is answered at once (a thread-per-connection server holds 30 threads; a bare
    2-thread pool would make it wait for the idle ones' timeout), and no more than 2 workers
    ever exist."""
    with serving(ViewerApp(tiny_run), workers=2, timeout=60) as server:
        idle = [socket.create_connection(server.server_address[:2], timeout=10) for _ in range(30)]
        try:
            connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
            for _ in range(3):  # keep-alive: each request after the first comes back from the waiting room
                connection.request("GET", TILE)
                response = connection.getresponse()
                assert response.status == 200 and response.read()[:2] == b"\xff\xd8"
            connection.close()
            assert 1 <= workers(server) <= 2
            assert closed_by_server(idle, 0.2) == 0  # still open: the timeout is 60 s
        finally:
            for sock in idle:
                sock.close()


def test_idle_and_half_sent_connections_are_closed_after_the_timeout(tiny_run):  # noqa: F811
    """With a 0.5 s timeout: connections that send nothing, one that stops half-way through its
    headers (holding a worker meanwhile), and one left idle after a request are all closed by
    the server (waited for up to 20 s, 40 x the timeout); the server then still answers."""
    with serving(ViewerApp(tiny_run), workers=2, timeout=0.5) as server:
        address = server.server_address[:2]
        idle = [socket.create_connection(address, timeout=10) for _ in range(20)]
        half = socket.create_connection(address, timeout=10)
        half.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{address[1]}\r\nAccept: ".encode())
        used = socket.create_connection(address, timeout=10)
        used.sendall(f"GET {TILE} HTTP/1.1\r\nHost: 127.0.0.1:{address[1]}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += used.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        sockets = [*idle, half, used]
        try:
            assert closed_by_server(sockets, 20) == len(sockets)
            assert len(server.waiting) == 0
            connection = http.client.HTTPConnection(*address, timeout=10)
            connection.request("GET", "/api/run")
            assert connection.getresponse().status == 200
            connection.close()
        finally:
            for sock in sockets:
                sock.close()


# -- the command's arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "reason"), [
    (["--port", "99999"], "argument --port: 99999 is not in 0..65535"),
    (["--port", "-1"], "argument --port: -1 is not in 0..65535"),
    (["--port", "http"], "argument --port: 'http' is not an integer"),
    (["--workers", "0"], "argument --workers: 0 is not in 1..256"),
    (["--timeout", "0"], "argument --timeout: 0 is not a number of seconds above 0"),
    (["--timeout", "nan"], "argument --timeout: nan is not a number of seconds above 0"),
    (["--cache-mb", "-5"], "argument --cache-mb: -5 is not in 0..1048576"),
])
def test_a_bad_number_is_one_line_and_exit_2(tmp_path, capsys, argv, reason):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and reason in err and err.count("\n") == 1, err


# -- slides that moved ---------------------------------------------------------------------------


def moved_run(tiny_run: Path, folder: Path) -> tuple[Path, Path]:  # noqa: F811
    """A copy of the run whose slides were moved after it ran: ``run.json`` names
    ``folder/slides/<slide>.tif``, the files lie in ``folder/archive/<kind>/`` with upper-case
    names. Returns the run and the archive."""
    run = shutil.copytree(tiny_run, folder / "run")
    description = json.loads((run / "run.json").read_text())
    archive = folder / "archive"
    for slide in description["slides"]:
        original = Path(slide["path"])
        kind = slide["label"]
        (archive / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(original, archive / kind / original.name.upper())
        slide["path"] = str(folder / "slides" / original.name)  # where it was when the run ran
    (run / "run.json").write_text(json.dumps(description))
    return run, archive


def test_slides_that_moved_are_found_by_name_with_slides(tiny_run, tmp_path):  # noqa: F811
    run, archive = moved_run(tiny_run, tmp_path)
    lost = ViewerApp(run)
    response = lost.handle(TILE)
    assert response.status == 404 and b"slide file of 'tumor_001' not found" in response.body
    assert b"--slides" in response.body and lost.handle("/").body.count(b"slide file not found") == 2

    found = ViewerApp(RunFolder(run, slides=archive))
    assert found.run.slide("tumor_001").path == (archive / "tumor" / "TUMOR_001.TIF").resolve()
    assert found.handle(TILE).body == ViewerApp(tiny_run).handle(TILE).body
    assert found.handle("/thumb/normal_001.jpeg").status == 200
    assert b"slide file not found" not in found.handle("/").body


def test_slides_keeps_the_files_where_run_json_says(tiny_run, tmp_path):  # noqa: F811
    """A slide still where the run found it keeps that file; only missing ones are looked for."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tumor_001.tif").write_bytes(b"not this one")
    run = RunFolder(tiny_run, slides=elsewhere)
    assert run.slide("tumor_001").path == RunFolder(tiny_run).slide("tumor_001").path


def test_slides_refuses_a_missing_folder_and_two_files_of_one_slide(tiny_run, tmp_path, capsys):  # noqa: F811
    run, archive = moved_run(tiny_run, tmp_path)
    assert main([str(run), "--slides", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --slides: ") and "nowhere: folder not found" in err
    shutil.copy(archive / "tumor" / "TUMOR_001.TIF", archive / "normal" / "tumor_001.svs")
    assert main([str(run), "--slides", str(archive), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "TUMOR_001.TIF" in err and "tumor_001.svs" in err and "are both slide" in err and err.count("\n") == 1


# -- make test says when the browser tests were skipped --------------------------------------------


class Reporter:
    """What the hook reads of pytest's terminal reporter."""

    def __init__(self, skipped: list[SimpleNamespace]):
        self.stats = {"skipped": skipped, "passed": [SimpleNamespace(nodeid="tests/test_x.py::t", longrepr=None)]}
        self.lines: list[str] = []

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append(line)


def test_skipped_browser_tests_are_said_in_the_last_line():
    """One line per reason, for browser tests only (a skip elsewhere is not about Chromium)."""
    reason = "Chromium or chromedriver not found; install: apt-get install -y chromium chromium-driver"
    skipped = [SimpleNamespace(nodeid=f"tests/test_{name}_browser.py::test_{k}",
                               longrepr=("f.py", 3, f"Skipped: {reason}"))
               for name in ("viewer", "review") for k in range(3)]
    skipped.append(SimpleNamespace(nodeid="tests/test_slide.py::test_real", longrepr=("f.py", 9, "Skipped: none")))
    reporter = Reporter(skipped)
    config = SimpleNamespace(pluginmanager=SimpleNamespace(get_plugin=lambda name: reporter))
    pytest_unconfigure(config)
    assert reporter.lines == [f"browser tests skipped: {reason}"]
    quiet = Reporter(skipped[-1:])
    pytest_unconfigure(SimpleNamespace(pluginmanager=SimpleNamespace(get_plugin=lambda name: quiet)))
    assert quiet.lines == []
