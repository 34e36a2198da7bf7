"""Dataset downloader: fresh, resumed and restarted downloads, verification, skipping, and one-line errors.

Nothing here reaches the internet: fake files are served by a local ``ThreadingHTTPServer`` on 127.0.0.1 (one handler
honours ``Range``, a variant ignores it, others truncate, fail or stall), and the manifests are fake or mirrored.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import pytest

from axial_kd_tf.data import download as dl
from axial_kd_tf.data.__main__ import main
from axial_kd_tf.errors import UserError

REPO = Path(__file__).resolve().parent.parent
FILES = {"a.bin": os.urandom(150_000), "sub/b.bin": os.urandom(40_000)}


class _State:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files  # URL path (without the leading "/") -> content
        self.honour_range = True
        self.truncate_at: Optional[int] = None  # stop sending the body after this many bytes
        self.status: Optional[int] = None  # answer every request with this error status
        self.stall = False  # send nothing (the client times out)
        self.log: list[dict] = []


def _handler(state: _State) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:
            entry = {"path": self.path, "range": self.headers.get("Range"), "status": None, "sent": 0}
            state.log.append(entry)
            if state.stall:
                threading.Event().wait(1.0)
                return
            data = state.files.get(self.path.lstrip("/"))
            if state.status or data is None:
                entry["status"] = state.status or 404
                self.send_error(entry["status"])
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
            if match and state.honour_range:
                start = int(match.group(1))
                if start >= len(data):
                    entry["status"] = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                entry["status"] = 206
            else:
                self.send_response(200)
                entry["status"] = 200
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate_at is not None:
                body = body[:state.truncate_at]
            # Record before writing: the client may finish reading (and the test assert) before write() returns.
            entry["sent"] = len(body)
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, _State]]:
    state = _State(dict(FILES))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _manifest(base: str, files: dict[str, bytes] = FILES, algorithm: str = "sha256",
              bad_digest: bool = False) -> dl.Dataset:
    """A fake dataset whose files are served at ``<base>/<path>``."""
    remote = tuple(
        dl.RemoteFile(path, f"{base}/{path}", algorithm,
                      "0" * 64 if bad_digest else hashlib.new(algorithm, data).hexdigest())
        for path, data in files.items()
    )
    return dl.Dataset("fake", "a fake dataset", base, remote, "public domain", "nobody, 2024")


def _get(dest: Path, base: str, **kw) -> Path:
    kw.setdefault("retries", 0)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("out", None)
    kw.setdefault("progress", None)
    return dl.download("fake", dest, dataset=kw.pop("dataset", None) or _manifest(base), **kw)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_fresh_download_verifies_and_prints_progress(tmp_path: Path, server) -> None:
    base, state = server
    progress, out = io.StringIO(), io.StringIO()
    folder = _get(tmp_path / "d", base, progress=progress, out=out)
    for path, data in FILES.items():
        assert (folder / path).read_bytes() == data
    assert not list(folder.rglob("*.part"))
    assert "a.bin: 150.0 / 150.0 kB (100%)" in progress.getvalue() and "sha256 verified" in progress.getvalue()
    assert "public domain" in out.getvalue() and "nobody, 2024" in out.getvalue()  # licence and citation
    assert [e["range"] for e in state.log] == [None, None]
    state.log.clear()
    _get(folder, base)  # everything present with the right checksum: no request at all
    assert state.log == []


def test_resume_sends_range_and_appends(tmp_path: Path, server) -> None:
    base, state = server
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.bin.part").write_bytes(FILES["a.bin"][:100_000])
    _get(folder, base, dataset=_manifest(base, {"a.bin": FILES["a.bin"]}))
    assert (folder / "a.bin").read_bytes() == FILES["a.bin"]
    assert state.log == [{"path": "/a.bin", "range": "bytes=100000-", "status": 206, "sent": 50_000}]
    assert not (folder / "a.bin.part").exists()


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, server) -> None:
    base, state = server
    state.honour_range = False
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.bin.part").write_bytes(b"x" * 1000)  # not even a prefix of the file: appending would corrupt it
    progress = io.StringIO()
    _get(folder, base, dataset=_manifest(base, {"a.bin": FILES["a.bin"]}), progress=progress)
    assert (folder / "a.bin").read_bytes() == FILES["a.bin"]
    assert state.log[0]["range"] == "bytes=1000-" and state.log[0]["status"] == 200
    assert "restarting" in progress.getvalue()


def test_complete_part_answered_416_is_verified_and_kept(tmp_path: Path, server) -> None:
    base, state = server
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.bin.part").write_bytes(FILES["a.bin"])
    _get(folder, base, dataset=_manifest(base, {"a.bin": FILES["a.bin"]}))
    assert (folder / "a.bin").read_bytes() == FILES["a.bin"] and state.log[0]["status"] == 416


def test_checksum_mismatch_deletes_the_part_and_names_the_file(tmp_path: Path, server) -> None:
    base, _ = server
    with pytest.raises(UserError) as exc:
        _get(tmp_path / "d", base, dataset=_manifest(base, bad_digest=True))
    message = _one_line(exc)
    assert str(tmp_path / "d" / "a.bin") in message and "re-run" in message and "sha256" in message
    assert not (tmp_path / "d" / "a.bin").exists() and not (tmp_path / "d" / "a.bin.part").exists()


def test_md5_manifest_and_bad_existing_file_is_replaced(tmp_path: Path, server) -> None:
    base, state = server
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "b.bin").write_bytes(b"stale")
    _get(folder, base, dataset=_manifest(base, algorithm="md5"))
    assert (folder / "sub" / "b.bin").read_bytes() == FILES["sub/b.bin"]
    assert len(state.log) == 2


def test_interrupted_transfer_keeps_the_part_and_a_rerun_resumes(tmp_path: Path, server) -> None:
    base, state = server
    folder = tmp_path / "d"
    state.truncate_at = 60_000
    with pytest.raises(UserError) as exc:
        _get(folder, base, dataset=_manifest(base, {"a.bin": FILES["a.bin"]}))
    message = _one_line(exc)
    assert "re-run the same command to resume" in message and "60000 bytes kept" in message
    assert (folder / "a.bin.part").stat().st_size == 60_000 and not (folder / "a.bin").exists()
    state.truncate_at = None
    _get(folder, base, dataset=_manifest(base, {"a.bin": FILES["a.bin"]}))
    assert (folder / "a.bin").read_bytes() == FILES["a.bin"]
    assert state.log[-1]["range"] == "bytes=60000-" and state.log[-1]["sent"] == 90_000


def test_retry_after_a_dropped_connection_resumes_in_the_same_call(tmp_path: Path, server) -> None:
    base, state = server
    folder = tmp_path / "d"
    seen = []

    class Resetter(io.StringIO):  # the first retry notice restores the server
        def write(self, text: str) -> int:
            if "retrying" in text:
                seen.append(text)
                state.truncate_at = None
            return super().write(text)

    state.truncate_at = 50_000
    _get(folder, base, dataset=_manifest(base, {"a.bin": FILES["a.bin"]}), retries=2, backoff=0.0,
         progress=Resetter())
    assert (folder / "a.bin").read_bytes() == FILES["a.bin"] and len(seen) == 1
    assert [e["range"] for e in state.log] == [None, "bytes=50000-"]


def test_http_error_and_timeout_are_one_line_user_errors(tmp_path: Path, server) -> None:
    base, state = server
    state.status = 404
    with pytest.raises(UserError) as exc:
        _get(tmp_path / "d", base)
    assert "HTTP 404" in _one_line(exc) and f"{base}/a.bin" in str(exc.value)
    state.status, state.stall = None, True
    with pytest.raises(UserError) as exc:
        _get(tmp_path / "d", base, timeout=0.2)
    assert "timeout" in _one_line(exc) and "re-run" in str(exc.value)
    state.stall = False
    with pytest.raises(UserError) as exc:  # nothing listens there
        _get(tmp_path / "d", base.rsplit(":", 1)[0] + ":9", timeout=2.0)
    assert "failed" in _one_line(exc)


def test_shipped_manifests() -> None:
    sstem, covid = dl.get_dataset("sstem", mirror=""), dl.get_dataset("covid", mirror="")
    assert len(sstem.files) == 40 and all(f.algorithm == "sha256" and len(f.digest) == 64 for f in sstem.files)
    assert sstem.files[0].path == "raw/00.tif" and sstem.files[0].url == (
        "https://raw.githubusercontent.com/unidesigner/groundtruth-drosophila-vnc/master/stack1/raw/00.tif")
    assert sstem.files[-1].url.endswith("/stack1/labels/labels00000019.png")
    assert {(f.path, f.url, f.digest) for f in covid.files} == {
        ("tr_im.nii.gz", "https://ndownloader.figshare.com/files/25953977", "54f82e3a9ac01bf6cc2300ca53d820ae"),
        ("tr_mask.nii.gz", "https://ndownloader.figshare.com/files/25953980", "d11996de45d06d332658115d8b3cf6fc"),
        ("val_im.nii.gz", "https://ndownloader.figshare.com/files/25953983", "098e8ab8b2e85f7c66abf8a92721ee95"),
    }
    assert "CC BY-NC-SA 3.0" in sstem.licence and "10.6084/m9.figshare.856713" in sstem.citation
    assert "figshare" in covid.licence and "10.6084/m9.figshare.13521488" in covid.citation
    assert dl.read_checksums("ABCDEF0123456789abcdef0123456789 *x/y.png\n# note\n") == {
        "x/y.png": "abcdef0123456789abcdef0123456789"}


def test_cli_download_sstem_from_a_mirror_then_verify(tmp_path: Path, server, monkeypatch, capsys,
                                                      sstem_dir: Path) -> None:
    """Mirrors the real copy (opt-in: ``AXIAL_KD_SSTEM_DIR``), downloads and verifies it against the checksums."""
    base, state = server
    state.files.update({f"sstem/{p.relative_to(sstem_dir)}": p.read_bytes()
                        for p in sstem_dir.rglob("*") if p.suffix in (".tif", ".png")})
    monkeypatch.setenv(dl.MIRROR_ENV, base)
    monkeypatch.setenv("AXIAL_KD_DATA_DIR", str(tmp_path / "cache"))
    assert main(["download", "sstem"]) == 0  # into $AXIAL_KD_DATA_DIR/sstem
    out = capsys.readouterr().out
    assert "CC BY-NC-SA 3.0" in out and "Gerhard" in out and "40 downloaded" in out
    folder = tmp_path / "cache" / "sstem"
    assert (folder / "raw" / "07.tif").read_bytes() == (sstem_dir / "raw" / "07.tif").read_bytes()
    assert (folder / "labels" / "labels00000019.png").is_file()
    assert main(["verify", "sstem"]) == 0
    (folder / "raw" / "03.tif").write_bytes(b"tampered")
    assert main(["verify", "sstem"]) == 2
    captured = capsys.readouterr()
    assert "mismatch raw/03.tif" in captured.out
    assert captured.err.count("\n") == 1 and "download sstem" in captured.err
    assert main(["info", "sstem", "--dir", str(folder)]) == 0
    assert "40 of 40 files present" in capsys.readouterr().out


def test_cli_unknown_dataset_in_process(capsys) -> None:
    assert main(["download", "covd"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown dataset 'covd' (did you mean 'covid'?); choose one of: sstem, covid\n"
    assert main(["info", "synthetic"]) == 2
    assert "needs no download" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "download" in capsys.readouterr().out


def test_cli_process_exit_code_2_one_line_on_unknown_dataset() -> None:
    proc = subprocess.run([sys.executable, "-m", "axial_kd_tf.data", "download", "mnist"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: unknown dataset 'mnist'; choose one of: sstem, covid"], proc.stderr
