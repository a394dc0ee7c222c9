"""Hostile and odd archives: each is refused whole, with the member named."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelport.errors import ArchiveRejected
from modelport.ingest.archive import Limits, detect_format, extract_file, extract_zip, file_opener
from tests.support.hostile import streamed_zip
from tests.support.tinymodels import archive_bytes

LIMITS = Limits(max_members=100, max_total_bytes=10_000)


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m in members:
            payload = (data or {}).get(m.name)
            if payload is not None:
                m.size = len(payload)
            tf.addfile(m, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _run(tmp_path: Path, blob: bytes, limits: Limits = LIMITS) -> list[str]:
    src = tmp_path / "archive"
    src.write_bytes(blob)
    return sorted(f.path for f in extract_file(src, tmp_path / "out", limits).files)


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
def test_plain_archives_extract_with_hashes(tmp_path: Path, fmt: str) -> None:
    files = {"config.json": b"{}", "sub/a.txt": b"a"}
    assert _run(tmp_path, archive_bytes(files, fmt)) == ["config.json", "sub/a.txt"]


@pytest.mark.parametrize("name", ["/etc/passwd", "../evil", "a/../../evil", "a\\b", "x/./../../y"])
def test_path_escapes_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArchiveRejected, match="archive member"):
        _run(tmp_path, _tar([tarfile.TarInfo(name)], {name: b"x"}))
    assert not (tmp_path / "evil").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "device file"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_links_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes, word: str) -> None:
    member = tarfile.TarInfo("weights.safetensors")
    member.type = kind
    member.linkname = "/etc/shadow"
    with pytest.raises(ArchiveRejected, match=f"'weights.safetensors' is a {word}"):
        _run(tmp_path, _tar([member]))


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveRejected, match="'link' is not a regular file"):
        _run(tmp_path, buf.getvalue())


def test_duplicates_nested_archives_and_limits(tmp_path: Path) -> None:
    dup = [tarfile.TarInfo("a.json"), tarfile.TarInfo("a.json")]
    with pytest.raises(ArchiveRejected, match="more than once"):
        _run(tmp_path, _tar(dup, {"a.json": b"{}"}))
    with pytest.raises(ArchiveRejected, match="nested archives"):
        _run(tmp_path, archive_bytes({"inner.tar.gz": b"x"}, "tar"))
    with pytest.raises(ArchiveRejected, match="more than 2 files"):
        _run(tmp_path, archive_bytes({"a": b"", "b": b"", "c": b""}, "zip"), Limits(2, 10_000))
    with pytest.raises(ArchiveRejected, match="past 10 bytes"):
        _run(tmp_path, archive_bytes({"big": b"x" * 11}, "tar.gz"), Limits(10, 10))


def _lying_zip() -> bytes:
    """A member declaring 10 bytes that inflates to 50,000."""
    blob = bytearray(archive_bytes({"bomb": b"\0" * 50_000}, "zip"))
    local, central = blob.find(b"PK\x03\x04"), blob.find(b"PK\x01\x02")
    struct.pack_into("<I", blob, local + 22, 10)
    struct.pack_into("<I", blob, central + 24, 10)
    return bytes(blob)


def test_a_zip_that_lies_about_its_sizes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveRejected, match="does not match its recorded size"):
        _run(tmp_path, _lying_zip(), Limits(100, 10**9))
    # The directory-first reader never reads past the declared size.
    (tmp_path / "lie.zip").write_bytes(_lying_zip())
    with pytest.raises(ArchiveRejected, match="corrupt"):
        extract_zip(file_opener(tmp_path / "lie.zip"), tmp_path / "out2", Limits(100, 10**9))
    assert not (tmp_path / "out2" / "bomb").exists() or (tmp_path / "out2" / "bomb").stat().st_size <= 10


def test_streamed_zips_with_data_descriptors(tmp_path: Path) -> None:
    files = {"config.json": b"{}", "w.safetensors": bytes(range(256)) * 30}
    blob = streamed_zip(files, zipfile.ZIP_DEFLATED)
    assert struct.unpack_from("<H", blob, 6)[0] & 0x8  # really has a data descriptor
    assert _run(tmp_path, blob) == sorted(files)
    assert (tmp_path / "out" / "w.safetensors").read_bytes() == files["w.safetensors"]


def test_stored_entries_with_descriptors_fall_back_to_the_directory(tmp_path: Path) -> None:
    files = {"a.json": b"{}", "b.json": b"[]"}
    assert _run(tmp_path, streamed_zip(files, zipfile.ZIP_STORED)) == ["a.json", "b.json"]


def test_a_zip_whose_directory_disagrees_with_its_contents_is_refused(tmp_path: Path) -> None:
    blob = bytearray(archive_bytes({"config.json": b"{}", "model.safetensors": b"x" * 100}, "zip"))
    central = blob.find(b"PK\x01\x02")
    name_at = central + 46
    blob[name_at : name_at + 6] = b"CONFIG"
    with pytest.raises(ArchiveRejected, match="directory does not match its contents"):
        _run(tmp_path, bytes(blob))


def test_a_tampered_zip_member_fails_its_crc(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"hello world")
    blob = bytearray(buf.getvalue())
    blob[blob.find(b"hello")] ^= 0xFF
    with pytest.raises(ArchiveRejected, match="CRC-32"):
        _run(tmp_path, bytes(blob))


@pytest.mark.parametrize(("flag_offset", "value", "match"), [(6, 0x1, "encrypted"), (8, 14, "compression method 14")])
def test_encrypted_and_exotic_zip_members_are_refused(tmp_path: Path, flag_offset: int, value: int, match: str) -> None:
    blob = bytearray(archive_bytes({"a.txt": b"hello"}, "zip"))
    struct.pack_into("<H", blob, flag_offset, value)
    with pytest.raises(ArchiveRejected, match=match):
        _run(tmp_path, bytes(blob))


def test_overlapping_entries_are_refused_by_the_directory_reader(tmp_path: Path) -> None:
    blob = bytearray(archive_bytes({"a": b"A" * 1000, "b": b"B" * 1000}, "zip"))
    second_central = blob.find(b"PK\x01\x02", blob.find(b"PK\x01\x02") + 4)
    struct.pack_into("<I", blob, second_central + 42, 0)  # b's local header offset -> a's
    (tmp_path / "overlap.zip").write_bytes(bytes(blob))
    with pytest.raises(ArchiveRejected, match="overlap"):
        extract_zip(file_opener(tmp_path / "overlap.zip"), tmp_path / "out", LIMITS)


def test_litter_is_skipped_and_wrapping_folder_flattened(tmp_path: Path) -> None:
    files = {"m/config.json": b"{}", "__MACOSX/m/._config.json": b"", "m/.DS_Store": b""}
    src = tmp_path / "a"
    src.write_bytes(archive_bytes(files, "zip"))
    result = extract_file(src, tmp_path / "out", LIMITS)
    assert [f.path for f in result.files] == ["config.json"] and result.flattened_from == "m"


def test_format_is_detected_by_content(tmp_path: Path) -> None:
    for fmt in ("zip", "tar", "tar.gz"):
        p = tmp_path / f"x.{fmt}"
        p.write_bytes(archive_bytes({"a": b"1"}, fmt))
        assert detect_format(p.read_bytes()[:512]) == fmt
    junk = tmp_path / "model.tar.gz"
    junk.write_bytes(b"<html>AccessDenied</html>")
    with pytest.raises(ArchiveRejected, match=r"not a \.zip, \.tar or \.tar\.gz"):
        detect_format(junk.read_bytes())


def test_truncated_archives_are_refused(tmp_path: Path) -> None:
    blob = archive_bytes({"a.bin.txt": b"y" * 5000}, "tar.gz")
    with pytest.raises(ArchiveRejected, match="corrupt or truncated"):
        _run(tmp_path, blob[: len(blob) // 2])


def test_every_entry_counts_toward_a_cap(tmp_path: Path) -> None:
    """Folders and litter are never written, but each header still costs memory and time to read."""
    folders = [tarfile.TarInfo(f"d{i}") for i in range(80)]
    for folder in folders:
        folder.type = tarfile.DIRTYPE
    with pytest.raises(ArchiveRejected, match="more than 72 entries"):
        _run(tmp_path, _tar(folders), Limits(2, 10_000))


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_skipped_litter_still_counts_toward_the_ratio(tmp_path: Path, fmt: str) -> None:
    blob = archive_bytes({"config.json": b"{}", "__MACOSX/._config.json": bytes(64 * 2**20)}, fmt)
    with pytest.raises(ArchiveRejected, match="inflates more than 100x"):
        _run(tmp_path, blob, Limits(100, 10**12))
    assert not (tmp_path / "out").exists()


def test_parallel_extraction_reports_the_real_reason(tmp_path: Path) -> None:
    """One thread refuses the archive; the others stop, and their "stopped" never hides the reason."""
    blob = bytearray(streamed_zip({f"f{i}.json": b"{}" * 1000 for i in range(6)}, zipfile.ZIP_STORED))
    at = blob.find(b"f3.json")  # the local header's copy of the name; the directory keeps f3.json
    blob[at : at + 2] = b"g3"
    with pytest.raises(ArchiveRejected, match=r"'f3\.json': its local header disagrees"):
        _run(tmp_path, bytes(blob), Limits(100, 10**9, zip_threads=2))
    assert not (tmp_path / "out").exists()
