"""Download the public datasets (``sstem``, ``covid``) into the cache the loaders read, resumably and verified.

``python -m axial_kd_tf.data download sstem|covid [--dir DIR]`` writes into ``--dir``, else
``$AXIAL_KD_DATA_DIR/<name>``, else ``~/.cache/axial_kd_tf/<name>`` (:func:`axial_kd_tf.data.io.default_data_root`,
which is also where ``data.root: null`` looks).

Per file: an existing file with the right checksum is skipped; otherwise the data goes to ``<file>.part``, resumed with
an HTTP ``Range`` request when a ``.part`` is already there (a server that answers ``200`` instead of ``206`` restarts
it from the beginning), is checked against the shipped checksum (sha256 for ssTEM, md5 for MedSeg) and only then
renamed onto the final name. A checksum mismatch deletes the ``.part``; a network error keeps it, so re-running the
same command continues where it stopped. Only the standard library (``urllib``) is used.

``AXIAL_KD_DOWNLOAD_MIRROR=<base url>`` fetches ``<base url>/<name>/<file>`` instead of the upstream URLs (tests and
local mirrors).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Optional, TextIO

from axial_kd_tf.data.io import default_data_root
from axial_kd_tf.errors import UserError

__all__ = ["RemoteFile", "Dataset", "DATASETS", "MIRROR_ENV", "get_dataset", "read_checksums", "file_digest",
           "digest_matches", "fetch", "download", "verify", "info"]

MIRROR_ENV = "AXIAL_KD_DOWNLOAD_MIRROR"
USER_AGENT = "axial-kd-tf-downloader/0.1 (python urllib)"
CHUNK = 1 << 16
# Network trouble worth another try (resuming from the .part); HTTP errors other than these statuses are final.
_TRANSIENT = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError)
_DEFAULT = object()  # "sys.stdout / sys.stderr at call time" (so redirections and capture work)
_TRANSIENT_STATUS = (408, 425, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: ``path`` relative to the dataset folder, its URL and expected checksum."""

    path: str
    url: str
    algorithm: str  # a hashlib name: "sha256", "md5"
    digest: str  # hex, or a prefix of 8+ digits (torch.hub's checkpoint-name convention: digest_matches)


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    source: str
    files: tuple[RemoteFile, ...]
    licence: str
    citation: str
    notes: str = ""

    def with_mirror(self, mirror: str) -> "Dataset":
        """The same files fetched from ``<mirror>/<name>/<path>``."""
        base = mirror.rstrip("/")
        return replace(self, files=tuple(replace(f, url=f"{base}/{self.name}/{f.path}") for f in self.files))


def read_checksums(text: str) -> dict[str, str]:
    """Parse ``sha256sum`` / ``md5sum`` output (``<hex>  <path>``, optional ``*`` binary marker) to ``{path: hex}``."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{32,128})\s+\*?(.+)", line)
        if not match:
            raise ValueError(f"malformed checksum line: {line!r}")
        table[match.group(2).strip()] = match.group(1).lower()
    return table


def _shipped_checksums(filename: str) -> dict[str, str]:
    return read_checksums((resources.files("axial_kd_tf.data") / "checksums" / filename).read_text("utf-8"))


# ------------------------------------------------------------------------------------------------------ datasets
_SSTEM_BASE = "https://raw.githubusercontent.com/unidesigner/groundtruth-drosophila-vnc/master/stack1/"
_COVID_IDS = {"tr_im.nii.gz": 25953977, "tr_mask.nii.gz": 25953980, "val_im.nii.gz": 25953983}


def _sstem() -> Dataset:
    sums = _shipped_checksums("sstem.sha256")
    names = [f"raw/{i:02d}.tif" for i in range(20)] + [f"labels/labels{i:08d}.png" for i in range(20)]
    return Dataset(
        name="sstem",
        title="ssTEM Drosophila ventral nerve cord, stack 1 (20 labelled 1024x1024 sections, 5 classes)",
        source="https://github.com/unidesigner/groundtruth-drosophila-vnc (stack1, commit 4a5f051)",
        files=tuple(RemoteFile(n, _SSTEM_BASE + n, "sha256", sums[n]) for n in names),
        licence="Creative Commons Attribution-NonCommercial-ShareAlike 3.0 Unported (CC BY-NC-SA 3.0); free to use "
                "for generating or testing non-commercial image segmentation software",
        citation="Stephan Gerhard, Jan Funke, Julien Martel, Albert Cardona, Richard Fetter. Segmented anisotropic "
                 "ssTEM dataset of neural tissue. figshare, 2013. doi:10.6084/m9.figshare.856713",
    )


def _covid() -> Dataset:
    sums = _shipped_checksums("covid.md5")
    return Dataset(
        name="covid",
        title="MedSeg Covid Dataset 1 (100 labelled 512x512 CT slices, 4 classes; 10 unlabelled slices)",
        source="https://doi.org/10.6084/m9.figshare.13521488",
        files=tuple(RemoteFile(n, f"https://ndownloader.figshare.com/files/{i}", "md5", sums[n])
                    for n, i in _COVID_IDS.items()),
        licence="not restated here: see the figshare record https://doi.org/10.6084/m9.figshare.13521488 for "
                "the terms of use before using or redistributing the data",
        citation="MedSeg. MedSeg Covid Dataset 1. figshare. doi:10.6084/m9.figshare.13521488",
        notes="tr_im/tr_mask hold the 100 labelled slices the loader uses; val_im holds 10 slices without labels",
    )


DATASETS = {"sstem": _sstem, "covid": _covid}


def get_dataset(name: str, mirror: Optional[str] = None) -> Dataset:
    """The manifest of ``name``; ``mirror`` (default: ``$AXIAL_KD_DOWNLOAD_MIRROR``) replaces the upstream URLs."""
    if name not in DATASETS:
        if name in ("synthetic", "folders"):
            raise UserError(f"dataset '{name}' needs no download; downloadable datasets: {', '.join(DATASETS)}")
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown dataset '{name}'{hint}; choose one of: {', '.join(DATASETS)}")
    dataset = DATASETS[name]()
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    return dataset.with_mirror(mirror) if mirror else dataset


# ------------------------------------------------------------------------------------------------------ fetching
def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_matches(got: str, expected: str) -> bool:
    """``got`` (a full hex digest) matches ``expected``: equal, or ``expected`` is a prefix of 8+ hex digits.

    The prefix form is torch.hub's ``check_hash`` convention: published PyTorch checkpoints name only the first
    digits of their sha256 (``resnet18-f37072fd.pth``), so that is all a downloader can check against.
    """
    expected = expected.lower()
    return got == expected or (len(expected) >= 8 and got.startswith(expected))


def _sizes(done: int, total: Optional[int]) -> str:
    """``3.1 / 10.2 MB``, in the unit that suits ``total`` (B, kB or MB)."""
    scale, unit = next((s, u) for s, u in ((1e6, "MB"), (1e3, "kB"), (1, "B")) if (total or done) >= s or s == 1)
    fmt = (lambda n: f"{n:.0f}") if scale == 1 else (lambda n: f"{n / scale:.1f}")
    return f"{fmt(done)} / {fmt(total)} {unit}" if total else f"{fmt(done)} {unit}"


class _Progress:
    """``name: 3.1 / 10.2 MB (30%)``: rewritten in place on a terminal, a line per 25 % (or 10 MB) otherwise."""

    def __init__(self, stream: Optional[TextIO], label: str, done: int, total: Optional[int]) -> None:
        self.stream, self.label, self.done, self.total = stream, label, done, total
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.last_time = 0.0
        self.last_step = self._step()

    def _step(self) -> int:
        return int(4 * self.done / self.total) if self.total else self.done // 10_000_000

    def _text(self) -> str:
        if self.total:
            return f"{self.label}: {_sizes(self.done, self.total)} ({100 * self.done / self.total:.0f}%)"
        return f"{self.label}: {_sizes(self.done, None)}"

    def update(self, n: int) -> None:
        self.done += n
        if self.stream is None:
            return
        if self.tty:
            now = time.monotonic()
            if now - self.last_time >= 0.2:
                self.last_time = now
                self.stream.write("\r" + self._text())
                self.stream.flush()
        elif self._step() > self.last_step:
            self.last_step = self._step()
            self.stream.write(self._text() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r" + self._text() + "\n")
        elif self.total is None or self.last_step < 4:
            self.stream.write(self._text() + "\n")
        self.stream.flush()


def _part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``bytes 100-199/200`` → (100, 200); unknown parts are None."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    return int(match.group(1)), (None if match.group(2) == "*" else int(match.group(2)))


def _transfer(url: str, part: Path, timeout: float, progress: Optional[TextIO], label: str) -> None:
    """One HTTP request appending to (or restarting) ``part``; raises the network error, or UserError when final."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part already holds the whole file (or more); the checksum decides
            return
        if exc.code in _TRANSIENT_STATUS:
            raise
        raise UserError(f"downloading '{url}' failed with HTTP {exc.code} {exc.reason}; check the URL or the "
                        f"mirror, then re-run the same command") from None
    with response:
        status = getattr(response, "status", 200)
        start, total = _content_range(response.headers.get("Content-Range"))
        length = response.headers.get("Content-Length")
        if status == 206 and start != offset:  # a range we did not ask for: drop the .part, start again
            part.unlink(missing_ok=True)
            raise http.client.HTTPException(f"the server sent bytes from {start} instead of {offset}")
        if offset and status == 206:
            mode = "ab"
        else:  # 200: the server ignored Range (or none was sent), so the body is the whole file
            if offset and progress is not None:
                progress.write(f"{label}: the server does not support resuming, restarting from the beginning\n")
            offset, mode, total = 0, "wb", None
        if total is None and length is not None and length.isdigit():
            total = offset + int(length)
        bar = _Progress(progress, label, offset, total)
        if offset and progress is not None:
            progress.write(f"{label}: resuming at {_sizes(offset, None)}\n")
        try:
            out = open(part, mode)
        except OSError as exc:
            raise UserError(f"cannot write '{part}': {exc.strerror or exc}; check the folder and free space") from None
        with out:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as exc:
                    raise UserError(f"cannot write '{part}': {exc.strerror or exc}; free some space and re-run "
                                    f"the same command to resume") from None
                bar.update(len(block))
        if total is not None and bar.done < total:
            raise http.client.IncompleteRead(b"", total - bar.done)
        bar.finish()


def fetch(
    remote: RemoteFile,
    dest: Path,
    *,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 2.0,
    progress: Optional[TextIO] = _DEFAULT,  # type: ignore[assignment]
) -> str:
    """Download ``remote`` to ``dest / remote.path``; returns ``"present"`` (skipped) or ``"downloaded"``.

    Resumes from ``<file>.part`` with a Range request, retries network errors ``retries`` times (waiting
    ``backoff · 2^k`` s), verifies the checksum, then renames atomically. Failures raise a one-line UserError.
    """
    if progress is _DEFAULT:
        progress = sys.stderr
    final = Path(dest) / remote.path
    part = _part_path(final)
    label = remote.path
    if final.is_file():
        if digest_matches(file_digest(final, remote.algorithm), remote.digest):
            return "present"
        if progress is not None:
            progress.write(f"{label}: {remote.algorithm} mismatch in the existing file, downloading it again\n")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder '{final.parent}': {exc.strerror or exc}") from None
    for attempt in range(retries + 1):
        try:
            _transfer(remote.url, part, timeout, progress, label)
            break
        except _TRANSIENT as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP {exc.code} {exc.reason}"
            elif isinstance(exc, http.client.IncompleteRead):
                reason = "the connection closed before the end of the file"
            elif isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
                reason = f"no data for {timeout:g} s (timeout)"
            if attempt < retries:
                if progress is not None:
                    progress.write(f"{label}: {reason}; retrying ({attempt + 1}/{retries})\n")
                time.sleep(backoff * 2 ** attempt)
                continue
            kept = part.stat().st_size if part.is_file() else 0
            resume = f"to resume ({kept} bytes kept in '{part}')" if kept else "to try again"
            raise UserError(f"downloading '{remote.url}' to '{final}' failed: {reason}; check the network and "
                            f"re-run the same command {resume}") from None
    if not part.is_file():
        raise UserError(f"downloading '{remote.url}' to '{final}' produced no data; re-run the same command")
    got = file_digest(part, remote.algorithm)
    if not digest_matches(got, remote.digest):
        part.unlink()
        raise UserError(f"'{final}' failed {remote.algorithm} verification (got {got}, expected {remote.digest}); "
                        f"the partial file was deleted, re-run the same command to download it again")
    os.replace(part, final)
    if progress is not None:
        progress.write(f"{label}: {remote.algorithm} verified\n")
    return "downloaded"


def download(
    name: str,
    dest: Optional[Path] = None,
    *,
    dataset: Optional[Dataset] = None,
    mirror: Optional[str] = None,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 2.0,
    out: Optional[TextIO] = _DEFAULT,  # type: ignore[assignment]
    progress: Optional[TextIO] = _DEFAULT,  # type: ignore[assignment]
) -> Path:
    """Download dataset ``name`` into ``dest`` (default: the cache the loaders read); returns the folder.

    ``dataset`` replaces the built-in manifest (tests, other mirrors); ``out`` gets the licence and a summary,
    ``progress`` the per-file progress (None silences either).
    """
    out = sys.stdout if out is _DEFAULT else out
    progress = sys.stderr if progress is _DEFAULT else progress
    ds = dataset or get_dataset(name, mirror)
    folder = Path(dest).expanduser() if dest is not None else default_data_root(ds.name)
    if out is not None:
        out.write(f"{ds.title}\n  into:    {folder}\n  source:  {ds.source}\n  licence: {ds.licence}\n"
                  f"  cite:    {ds.citation}\n")
        out.flush()
    counts = {"present": 0, "downloaded": 0}
    for remote in ds.files:
        counts[fetch(remote, folder, timeout=timeout, retries=retries, backoff=backoff, progress=progress)] += 1
    if out is not None:
        out.write(f"{ds.name}: {len(ds.files)} files verified in {folder} ({counts['downloaded']} downloaded, "
                  f"{counts['present']} already present)\n")
        out.flush()
    return folder


def verify(name: str, dest: Optional[Path] = None, *, dataset: Optional[Dataset] = None) -> dict[str, str]:
    """Check an existing copy: ``{path: "ok" | "missing" | "partial" | "mismatch"}`` (no network)."""
    ds = dataset or get_dataset(name)
    folder = Path(dest).expanduser() if dest is not None else default_data_root(ds.name)
    result: dict[str, str] = {}
    for remote in ds.files:
        path = folder / remote.path
        if path.is_file():
            ok = digest_matches(file_digest(path, remote.algorithm), remote.digest)
            result[remote.path] = "ok" if ok else "mismatch"
        else:
            result[remote.path] = "partial" if _part_path(path).is_file() else "missing"
    return result


def info(name: str, dest: Optional[Path] = None) -> str:
    """A description of dataset ``name``: files, checksums, licence, citation and the cache folder."""
    ds = get_dataset(name)
    folder = Path(dest).expanduser() if dest is not None else default_data_root(ds.name)
    present = sum((folder / f.path).is_file() for f in ds.files)
    lines = [
        ds.title,
        f"source:  {ds.source}",
        f"licence: {ds.licence}",
        f"cite:    {ds.citation}",
        f"folder:  {folder} ({present} of {len(ds.files)} files present; "
        f"download: python -m axial_kd_tf.data download {ds.name})",
    ]
    if ds.notes:
        lines.append(f"notes:   {ds.notes}")
    lines.append("files:")
    lines += [f"  {f.path}  {f.algorithm}:{f.digest}  {f.url}" for f in ds.files]
    return "\n".join(lines)
