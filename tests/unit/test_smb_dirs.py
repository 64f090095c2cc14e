"""smb_dirs._entries: the QUERY_DIRECTORY reply parser of SmbTarget.listdir's fast path, fed replies
built here by [MS-SMB2] 2.2.34 and [MS-FSCC] 2.4.10. Against the lab's Samba: test_smb_fences.py."""

import struct

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.targets import smb_dirs

EPOCH = 116444736000000000


def entry(name, size=0, attributes=0x20, written=EPOCH + 17_000_000_001_234_567, following=None):
    encoded = name.encode("utf-16-le")
    body = struct.pack("<IIQQQQQQII", 0, 0, 0, 0, written, 0, size, 0, attributes, len(encoded)) + encoded
    body += bytes(-len(body) % 8)
    if following is not None:
        body = struct.pack("<I", following) + body[4:]
    return body


def reply(*entries, offset=64 + 8, length=None):
    buffer = b""
    for index, item in enumerate(entries):
        last = index == len(entries) - 1
        if not last and struct.unpack_from("<I", item)[0] == 0:
            item = struct.pack("<I", len(item)) + item[4:]
        buffer += item
    return struct.pack("<HHI", 9, offset, len(buffer) if length is None else length) + buffer


def test_entries_names_sizes_folders_and_times():
    parsed = list(smb_dirs._entries(reply(entry("."), entry(".."), entry("a.json", 5), entry("dir-é", 99, 0x10),
                                          entry("ü€.arz", 2 ** 40))))
    mtime = 1_700_000_000.123456  # whole microseconds, as smbclient gives them
    assert parsed == [("a.json", False, 5, mtime), ("dir-é", True, 0, mtime), ("ü€.arz", False, 2 ** 40, mtime)]


def test_an_empty_reply_has_no_entries():
    assert list(smb_dirs._entries(struct.pack("<HHI", 9, 72, 0))) == []


@pytest.mark.parametrize("body, why", [
    (b"\x09\x00", "of 2 bytes"),
    (reply(entry("a"), length=10_000), "outside its reply"),
    (reply(entry("a"), offset=10), "outside its reply"),
    (reply(entry("a"))[:-10], "outside its reply"),
    (reply(entry("a", following=12)), "next offset 12"),
    (reply(entry("a", following=70)), "next offset 70"),
    (reply(entry("a", following=4096)), "past the end"),
    (struct.pack("<HHI", 9, 72, 68) + entry("abc")[:68], "name past the end"),
])
def test_a_reply_that_does_not_parse_is_refused(body, why):
    with pytest.raises(smb_dirs.MalformedListing, match=why):
        list(smb_dirs._entries(body))


def test_an_odd_name_length_is_refused():
    item = bytearray(entry("ab"))
    struct.pack_into("<I", item, 60, 3)
    with pytest.raises(smb_dirs.MalformedListing, match="name past the end"):
        list(smb_dirs._entries(reply(bytes(item))))


def test_a_name_that_is_not_utf16_is_refused():
    item = bytearray(entry("ab"))
    item[64:68] = b"\x00\xd8\x00\xd8"  # two high surrogates
    with pytest.raises(smb_dirs.MalformedListing, match="not UTF-16"):
        list(smb_dirs._entries(reply(bytes(item))))


def test_times_past_datetimes_years_are_datetime_max_and_1601_is_1601_as_smbprotocol_gives_them():
    import datetime

    far = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc).timestamp()
    parsed = list(smb_dirs._entries(reply(entry("late", written=2 ** 64 - 1), entry("early", written=0))))
    assert [(name, mtime) for name, dummy, dummy, mtime in parsed] == [("late", far), ("early", -11644473600.0)]  # 1601
    assert list(smb_dirs._entries(reply(entry("big", size=2 ** 64 - 1))))[0][2] == 2 ** 64 - 1  # unsigned
