"""Issue 16, archives by real bytes: what an attack run found, each now a clear ``archive_rejected``.

- a tiny tar whose sparse member unpacks to 1 GiB (GNU and PAX sparse formats) is refused at its header;
- 40 members of 16 MiB zeros (each under a per-member grace) are refused once the *archive* passes the
  ratio, with at most ``RATIO_GRACE_BYTES`` ever written to staging;
- concatenated, prepended and comment-hidden zips, and local headers that disagree with the directory,
  are refused by both zip readers (streamed, and directory-first);
- names that are one file on a case-insensitive or normalising filesystem are refused, naming both;
- over-long names are refused by rule, not by an OS error.

Every archive is built here from real bytes; extraction runs for real, and a few go through the whole
ingest pipeline (a real HTTP server, the real worker) to show the job fails with ``archive_rejected``.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelport.accounts.service import Principal
from modelport.errors import ArchiveRejected
from modelport.ingest.archive import (
    Extracted,
    Limits,
    extract_file,
    extract_tar,
    extract_zip,
    extract_zip_stream,
    file_opener,
)
from modelport.ingest.members import RATIO_GRACE_BYTES
from modelport.services import Services
from tests.integration.helpers import stored_blobs, upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of

MiB, GiB = 2**20, 2**30
# Roomy on purpose: what stops these archives must be the rule under test, not the size limit.
ROOMY = Limits(max_members=1000, max_total_bytes=64 * GiB)


# ---- extraction, and what it leaves behind ------------------------------------------------------------


def _refused(extract: Callable[[Path], Extracted], dest: Path, match: str) -> ArchiveRejected:
    with pytest.raises(ArchiveRejected, match=match) as info:
        extract(dest)
    assert not dest.exists(), "a refused archive must leave nothing in staging"
    return info.value


def _streamed(blob: bytes, tmp_path: Path, limits: Limits = ROOMY) -> Callable[[Path], Extracted]:
    """The archive through the one-pass readers (tar, tar.gz, streamed zip), as downloads are read."""
    src = tmp_path / "archive"
    src.write_bytes(blob)
    return lambda dest: extract_file(src, dest, limits)


def _zip_stream(blob: bytes, limits: Limits = ROOMY) -> Callable[[Path], Extracted]:
    return lambda dest: extract_zip_stream(io.BytesIO(blob), dest, limits)


def _zip_directory_first(blob: bytes, tmp_path: Path, limits: Limits = ROOMY) -> Callable[[Path], Extracted]:
    src = tmp_path / "directory-first.zip"
    src.write_bytes(blob)
    return lambda dest: extract_zip(file_opener(src), dest, limits)


ZIP_READERS = ["streamed", "directory-first"]


def _zip_reader(reader: str, blob: bytes, tmp_path: Path, limits: Limits = ROOMY) -> Callable[[Path], Extracted]:
    return _zip_stream(blob, limits) if reader == "streamed" else _zip_directory_first(blob, tmp_path, limits)


# ---- archives from raw bytes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes  # as stored in the zip
    crc: int
    usize: int
    method: int = 8


def deflated(name: str, content: bytes) -> Member:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return Member(name, packer.compress(content) + packer.flush(), zlib.crc32(content), len(content))


def raw_zip(members: list[Member], *, comment: bytes = b"", base: int = 0) -> bytes:
    """A zip written byte by byte; directory offsets count from ``base`` (what ``zip -A`` does to a zip
    that something was put in front of)."""
    body, central = bytearray(), bytearray()
    for m in members:
        name, offset = m.name.encode(), base + len(body)
        common = (0x800, m.method, 0, 0, m.crc, len(m.data), m.usize, len(name))  # flags, method, time, date, ...
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, *common, 0) + name + m.data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, *common, 0, 0, 0, 0, 0, offset) + name
    count = len(members)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), base + len(body), len(comment))
    return bytes(body + central + end + comment)


def with_zip64_end(blob: bytes) -> bytes:
    """The same zip with a zip64 end record and locator, and 0xFFFF.. in the classic end record."""
    end_at = blob.rindex(b"PK\x05\x06")
    _, _, _, entries, size, offset, comment_len = struct.unpack_from("<HHHHIIH", blob, end_at + 4)
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end_at, 1)
    classic = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, comment_len)
    return blob[:end_at] + record + locator + classic + blob[end_at + 22 :]


def _checksummed(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


GIB_SPARSE = GiB  # what each sparse member below claims to unpack to
STORED = b"W" * 512  # the one block of real data they hold


def gnu_sparse_tar() -> bytes:
    """An old-GNU sparse member (type 'S'): one 512-byte region at the end of a 1 GiB file of holes."""
    info = tarfile.TarInfo("weights.bin")
    info.type, info.size = tarfile.GNUTYPE_SPARSE, len(STORED)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\0%011o\0" % (GIB_SPARSE - len(STORED), len(STORED))  # the sparse map's first entry
    header[483:495] = b"%011o\0" % GIB_SPARSE  # the real size
    return _checksummed(header) + STORED + bytes(1024)


def pax_sparse_tar(version: str, regions: int = 1) -> bytes:
    """A PAX sparse member (GNU format 0.1: map in the header; 1.0: map in front of the data)."""
    hole = GIB_SPARSE - len(STORED)
    if version == "0.1":
        info = tarfile.TarInfo("weights.bin")
        info.pax_headers = {"GNU.sparse.map": f"{hole},{len(STORED)}", "GNU.sparse.size": str(GIB_SPARSE)}
        data = STORED
    else:
        info = tarfile.TarInfo("GNUSparseFile.0/weights.bin")
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": "weights.bin",
            "GNU.sparse.realsize": str(GIB_SPARSE),
        }
        data = (b"%d\n%d\n%d\n" % (regions, hole, len(STORED))).ljust(512, b"\0") + STORED
    info.size = len(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SPARSE = {"gnu": gnu_sparse_tar, "pax-0.1": lambda: pax_sparse_tar("0.1"), "pax-1.0": lambda: pax_sparse_tar("1.0")}


def zeros_zip(members: int = 40, size: int = 16 * MiB) -> bytes:
    """``members`` deflated members of ``size`` zeros each: each under a per-member grace."""
    one = deflated("x", bytes(size))
    return raw_zip([Member(f"shard-{i:02}.bin", one.data, one.crc, one.usize) for i in range(members)])


def zeros_tar_gz(members: int = 40, size: int = 16 * MiB) -> bytes:
    """The same as a tar.gz, made of gzip members (a header, then the zeros compressed once)."""
    zeros = gzip.compress(bytes(size), compresslevel=9)
    parts = []
    for i in range(members):
        info = tarfile.TarInfo(f"shard-{i:02}.bin")
        info.size = size
        parts += [gzip.compress(info.tobuf(tarfile.GNU_FORMAT)), zeros]
    return b"".join([*parts, gzip.compress(bytes(1024))])


# ---- sparse members ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("kind", sorted(SPARSE))
def test_a_sparse_member_is_refused_at_its_header(tmp_path: Path, kind: str, gz: bool) -> None:
    blob = SPARSE[kind]()
    # The premise: Python's own reader takes this small archive for a 1 GiB file.
    assert len(blob) <= 10240  # one tar record
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        assert [(m.name, m.size) for m in tf.getmembers()] == [("weights.bin", GIB_SPARSE)]
    blob = gzip.compress(blob) if gz else blob
    error = _refused(_streamed(blob, tmp_path), tmp_path / "out", r"weights\.bin' is a sparse file")
    assert error.staged_bytes == 0


def test_a_huge_pax_sparse_map_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 1.0 map claiming a billion regions: refused at the header, never read into memory."""
    blob = pax_sparse_tar("1.0", regions=10**9)
    _refused(lambda dest: extract_tar(io.BytesIO(blob), False, dest, ROOMY), tmp_path / "out", "sparse file")


def test_oversized_extended_headers_are_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("config.json")
    info.pax_headers = {"comment": "x" * (2 * MiB)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b""))
    _refused(_streamed(gzip.compress(buf.getvalue()), tmp_path), tmp_path / "out", "extended header or long name")


# ---- many members, each under a per-member allowance ---------------------------------------------------


def test_forty_16_mib_members_are_refused_on_the_archive_ratio(tmp_path: Path) -> None:
    blob = zeros_zip()
    assert len(blob) < 1.2 * MiB  # 671 MB of zeros in about 650 KB
    error = _refused(_zip_stream(blob), tmp_path / "out", r"'shard-01\.bin': the archive inflates more than 100x")
    # Measured at the moment of refusal: never more than the one archive-wide grace was written.
    assert 0 < error.staged_bytes <= RATIO_GRACE_BYTES
    # Directory-first, the declared sizes give it away before a byte is written.
    error = _refused(_zip_directory_first(blob, tmp_path), tmp_path / "out2", "inflates more than 100x")
    assert error.staged_bytes == 0


def test_forty_16_mib_members_in_a_tar_gz_are_refused_too(tmp_path: Path) -> None:
    blob = zeros_tar_gz()
    assert len(blob) < 1.2 * MiB
    error = _refused(_streamed(blob, tmp_path), tmp_path / "out", "the archive inflates more than 100x")
    assert 0 < error.staged_bytes <= RATIO_GRACE_BYTES


def test_honest_archives_well_under_the_ratio_still_extract(tmp_path: Path) -> None:
    """The grace is for the archive: 40 small JSON files of zeros (4 MiB in all) are fine."""
    blob = zeros_zip(members=40, size=100 * 1024)
    for reader in ZIP_READERS:
        extracted = _zip_reader(reader, blob, tmp_path)(tmp_path / reader)
        assert len(extracted.files) == 40 and sum(f.size for f in extracted.files) == 40 * 100 * 1024


# ---- zips that two readers would read differently ------------------------------------------------------

HONEST = raw_zip([deflated("config.json", b'{"model_type": "llama"}')])
OTHER = raw_zip([deflated("evil.json", b'{"model_type": "evil"}')])


def _in_front(base: int) -> bytes:
    """``OTHER`` with directory offsets shifted by ``base``, as ``zip -A`` fixes up a self-extractor."""
    return raw_zip([deflated("evil.json", b'{"model_type": "evil"}')], base=base)


HOSTILE_ZIPS = {
    # unzip and zipfile read the last end record: OTHER's files; a front-to-back reader reads HONEST's
    "concatenated": (HONEST + OTHER, "after its end-of-directory record|not where its end record says"),
    "concatenated, offsets fixed up": (HONEST + _in_front(len(HONEST)), "after its end-of-directory|not where"),
    "prepended junk, offsets fixed up": (b"MZ" + bytes(510) + _in_front(512), "unexpected bytes at byte 0|not where"),
    "appended junk": (HONEST + b"\0" * 100, "after its end-of-directory record|does not end with its end"),
    "a zip in the comment": (HONEST[:-2] + struct.pack("<H", len(OTHER)) + OTHER, "more than one end-of-directory"),
}


@pytest.mark.parametrize("reader", ZIP_READERS)
@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_zips_that_other_tools_read_differently_are_refused(tmp_path: Path, case: str, reader: str) -> None:
    blob, match = HOSTILE_ZIPS[case]
    # The premise: Python's zipfile (like unzip) opens it, and does not see what a front-to-back read sees.
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = zf.namelist()
    assert names in (["evil.json"], ["config.json"])
    error = _refused(_zip_reader(reader, blob, tmp_path), tmp_path / "out", match)
    assert error.staged_bytes <= len(b'{"model_type": "llama"}')


def _local_name_changed(blob: bytes) -> bytes:
    changed = bytearray(blob)
    changed[30:36] = b"CONFIG"  # the local header's name; the directory still says config.json
    return bytes(changed)


def _local_size_changed() -> bytes:
    real = deflated("config.json", b"{}")
    blob = bytearray(raw_zip([real, deflated("b.json", b"[]")]))
    central = blob.index(b"PK\x01\x02")
    struct.pack_into("<I", blob, central + 24, real.usize + 1)  # the directory's uncompressed size
    return bytes(blob)


@pytest.mark.parametrize("reader", ZIP_READERS)
@pytest.mark.parametrize("blob", [_local_name_changed(HONEST), _local_size_changed()], ids=["name", "size"])
def test_local_headers_that_disagree_with_the_directory_are_refused(tmp_path: Path, reader: str, blob: bytes) -> None:
    _refused(_zip_reader(reader, blob, tmp_path), tmp_path / "out", "disagree")


@pytest.mark.parametrize("reader", ZIP_READERS)
def test_honest_zip_layouts_are_read_the_same_by_both_readers(tmp_path: Path, reader: str) -> None:
    """A comment, zip64 end records, zip64 extra fields: all fine, and the same files either way."""
    files = {"config.json": b"{}", "model.safetensors": bytes(range(256)) * 64}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.comment = b"made by hand; PK\x03\x04 in a comment is only text"
        for name, data in files.items():
            with zf.open(name, "w", force_zip64=True) as member:
                member.write(data)
    for i, blob in enumerate([buf.getvalue(), with_zip64_end(buf.getvalue())]):
        extracted = _zip_reader(reader, blob, tmp_path)(tmp_path / f"out{i}")
        assert {f.path: f.local.read_bytes() for f in extracted.files} == files


# ---- names that one filesystem would fold together -----------------------------------------------------

FOLDED = [
    ("Config.json", "config.json"),
    ("caf\u00e9.json", "cafe\u0301.json"),  # NFC and NFD spellings of the same name
    ("Weights/a.safetensors", "weights/b.safetensors"),  # one folder, two spellings
    ("STRASSE.json", "stra\u00dfe.json"),  # full case folding
]
FORMATS = ["tar", "tar.gz", "zip", "zip directory-first"]


def _pack(fmt: str, files: dict[str, bytes], tmp_path: Path) -> Callable[[Path], Extracted]:
    if fmt == "zip directory-first":
        return _zip_directory_first(archive_bytes(files, "zip"), tmp_path)
    return _streamed(archive_bytes(files, fmt), tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("first", "second"), FOLDED)
def test_names_one_filesystem_would_fold_together_are_refused(
    tmp_path: Path, fmt: str, first: str, second: str
) -> None:
    extract = _pack(fmt, {first: b"{}", second: b"[]"}, tmp_path)
    error = _refused(extract, tmp_path / "out", "same file on a case-insensitive or Unicode-normalising filesystem")
    for name in (first.split("/")[0], second.split("/")[0]):  # the clashing names, or folder names
        assert repr(name) in str(error) or ascii(name) in str(error)  # NFC/NFD pairs show their code points


# ---- long names ---------------------------------------------------------------------------------------

LONG_NAMES = {
    "300 characters": ("w" * 296 + ".bin", "name of 300 bytes; at most 255"),
    "300 bytes in 152 characters": ("\u00e9" * 148 + ".bin", "name of 300 bytes; at most 255"),
    "a 1,086-byte path": ("abcdefgh/" * 120 + "x.json", "path of 1086 bytes; at most 1024"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(LONG_NAMES))
def test_long_names_are_a_clear_rejection(tmp_path: Path, fmt: str, case: str) -> None:
    name, match = LONG_NAMES[case]
    _refused(_pack(fmt, {name: b"{}", "config.json": b"{}"}, tmp_path), tmp_path / "out", match)


def test_long_but_legal_names_extract(tmp_path: Path) -> None:
    name = "d" * 100 + "/" + "e" * 100 + "/" + "\u00e9" * 120 + ".json"  # 300+ characters, every part <= 255 bytes
    extracted = _streamed(archive_bytes({name: b"{}", "config.json": b"{}"}, "tar"), tmp_path)(tmp_path / "out")
    assert sorted(f.path for f in extracted.files) == ["config.json", name]


# ---- through the whole pipeline -------------------------------------------------------------------------


def _nothing_left(services: Services, who: Principal) -> None:
    assert services.catalog.list_models(who) == []
    assert stored_blobs(services) == set()
    assert list(services.settings.staging_dir.iterdir()) == []


def pipe_zip(files: dict[str, bytes]) -> bytes:
    """Stored members with data descriptors, as zip writers make them on a pipe: the one layout the
    stream cannot read, so the pipeline reads it directory-first over HTTP ranges."""
    out = bytearray()

    class Pipe(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            out.extend(b)
            return len(b)

    with zipfile.ZipFile(Pipe(), "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            with zf.open(name, "w") as member:
                member.write(data)
    return bytes(out)


PIPELINE = {
    "sparse.tar": (gnu_sparse_tar, "is a sparse file"),
    "descriptor-concatenated.zip": (lambda: pipe_zip({"config.json": b"{}"}) + OTHER, "not where its end record"),
    "zeros.zip": (zeros_zip, "the archive inflates more than 100x"),
    "concatenated.zip": (lambda: HONEST + OTHER, "after its end-of-directory record"),
    "long-name.zip": (lambda: archive_bytes({"w" * 296 + ".bin": b"{}"}, "zip"), "at most 255 bytes"),
}


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_the_job_fails_with_archive_rejected(services: Services, alice: Principal, hub: FakeHub, name: str) -> None:
    make, message = PIPELINE[name]
    view = upload(services, alice, name.split(".")[0], hub.serve_file(name, make()))
    assert (view.job.status, view.job.error_code) == ("Failed", "archive_rejected"), view.job.error_message
    assert message in (view.job.error_message or "")
    _nothing_left(services, alice)


def test_an_honest_zip_read_directory_first_over_ranges_completes(
    services: Services, alice: Principal, hub: FakeHub, tiny_llama: Path
) -> None:
    """The other side of the layout checks: a real model in the stored-with-descriptor layout goes through
    the directory-first reader over HTTP ranges and becomes a model."""
    blob = pipe_zip(files_of(tiny_llama))
    assert struct.unpack_from("<H", blob, 6)[0] & 0x8  # really has data descriptors
    view = upload(services, alice, "ranged", hub.serve_file("ranged.zip", blob))
    assert view.job.status == "Complete", view.job.error_message
    assert any(r for m, p, r in hub.requests if p == "/files/ranged.zip" and r)  # read by ranges
