#!/usr/bin/env python3
"""Write small valid inputs for each fuzz target into fuzz/corpus/TARGET/ (seed corpora).

    python3 fuzz/make_seeds.py

Standard library only. The corpus folders are not kept in git (.gitignore): run this before
the first `cargo +nightly fuzz run TARGET`.
"""

import io
import json
import os
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- tar_scan ------------------

def tar_of(members, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, arg in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                t.addfile(ti)
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE
                ti.linkname = arg
                t.addfile(ti)
            elif kind == "hard":
                ti.type = tarfile.LNKTYPE
                ti.linkname = arg
                t.addfile(ti)
            else:
                ti.size = len(arg)
                ti.mode = 0o644
                t.addfile(ti, io.BytesIO(arg))
    return buf.getvalue()


def tar_seeds():
    put("tar_scan", "volume.tar", tar_of([
        ("./", "dir", None),
        ("./a.txt", "file", b"hello"),
        ("./sub/", "dir", None),
        ("./sub/big", "file", bytes(range(256)) * 3),
        ("./link", "sym", "a.txt"),
        ("./sub/hard", "hard", "./a.txt"),
    ]))
    long = "./" + "d" * 120 + "/file"
    put("tar_scan", "pax.tar", tar_of([
        ("./", "dir", None),
        (long, "file", b"x"),
        ("./l", "sym", "x" * 150),
    ], tarfile.PAX_FORMAT))
    put("tar_scan", "gnu.tar", tar_of([
        (long, "file", b"gnu long name"),
        ("./up", "sym", "sub/../a"),
    ], tarfile.GNU_FORMAT))
    put("tar_scan", "unsafe.tar", tar_of([("../evil", "file", b"")]))
    put("tar_scan", "empty.tar", bytes(1024))


# ------------------------------------------------------------- mongo_archive ----------------

def cstr(s):
    return s.encode() + b"\0"


def bson(fields):
    body = b""
    for k, v in fields:
        if isinstance(v, bool):
            body += b"\x08" + cstr(k) + (b"\x01" if v else b"\x00")
        elif isinstance(v, tuple) and v[0] == "i64":
            body += b"\x12" + cstr(k) + struct.pack("<q", v[1])
        elif isinstance(v, int):
            body += b"\x10" + cstr(k) + struct.pack("<i", v)
        elif isinstance(v, str):
            e = v.encode()
            body += b"\x02" + cstr(k) + struct.pack("<i", len(e) + 1) + e + b"\0"
        elif isinstance(v, list):
            body += b"\x03" + cstr(k) + bson(v)
        else:
            raise TypeError(v)
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def crc64_xz(data):
    poly = 0xC96C5795D7870F42
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def signed(u):
    return u - (1 << 64) if u >= 1 << 63 else u


MAGIC = bytes([0x6D, 0xE2, 0x99, 0x81])
TERM = b"\xff\xff\xff\xff"


def mongo_archive(namespaces):
    out = MAGIC + bson([
        ("concurrent_collections", 1),
        ("version", "0.1"),
        ("server_version", "7.0.0"),
        ("tool_version", "drkit"),
    ])
    for db, coll, kind, meta, _ in namespaces:
        out += bson([("db", db), ("collection", coll), ("metadata", meta),
                     ("size", 0), ("type", kind)])
    out += TERM
    for db, coll, kind, meta, docs in namespaces:
        if docs:
            out += bson([("db", db), ("collection", coll), ("EOF", False), ("CRC", ("i64", 0))])
            for d in docs:
                out += d
            out += TERM
        crc = crc64_xz(b"".join(docs)) if docs else 0
        out += bson([("db", db), ("collection", coll), ("EOF", True),
                     ("CRC", ("i64", signed(crc)))])
        out += TERM
    return out


def mongo_seeds():
    meta = json.dumps({
        "options": {"capped": True, "size": {"$numberLong": "4096"}},
        "indexes": [{"v": {"$numberInt": "2"}, "key": {"_id": {"$numberInt": "1"}},
                     "name": "_id_"}],
        "uuid": "0123456789abcdef0123456789abcdef",
        "collectionName": "c",
        "type": "collection",
    })
    docs = [bson([("_id", i), ("name", "n%d" % i), ("sub", [("a", True)])]) for i in range(3)]
    view = json.dumps({"options": {"viewOn": "c", "pipeline": []}, "indexes": [],
                       "collectionName": "v", "type": "view"})
    put("mongo_archive", "archive.bin", mongo_archive([
        ("app", "c", "", meta, docs),
        ("app", "v", "view", view, []),
        ("app", "empty", "", "", []),
    ]))
    put("mongo_archive", "prelude_only.bin", mongo_archive([]))


# ---------------------------------------------------------------- globals ------------------

GLOBALS = r"""--
-- PostgreSQL database cluster dump
--

\restrict dW9Oq6mTbBkfbhcXqhn3ZQ2Nabcdef

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:abc=$def=:ghi=';
CREATE ROLE drkit;
ALTER ROLE drkit WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS CONNECTION LIMIT 5 VALID UNTIL 'infinity';
CREATE ROLE "We""ird; DROP";
ALTER ROLE "We""ird; DROP" WITH NOSUPERUSER NOINHERIT NOLOGIN PASSWORD NULL;
COMMENT ON ROLE app IS 'the app''s role; -- not a comment';
ALTER ROLE app SET search_path TO 'a', public;
ALTER ROLE app IN DATABASE appdb SET work_mem TO '64MB';
GRANT app TO drkit WITH ADMIN OPTION GRANTED BY drkit;
GRANT pg_read_all_data TO app GRANTED BY drkit;
CREATE TABLESPACE fast OWNER drkit LOCATION '/srv/fast';
ALTER TABLESPACE fast SET (random_page_cost=1.1, effective_io_concurrency=200);
COMMENT ON TABLESPACE fast IS E'ssd\'s';
GRANT ALL ON TABLESPACE fast TO app;
GRANT SET ON PARAMETER work_mem TO app;
REVOKE ALL ON TABLESPACE fast FROM PUBLIC;
SELECT pg_catalog.set_config('search_path', '', false);
COMMENT ON ROLE drkit IS $tag$dollar 'quoted'$tag$;

\unrestrict dW9Oq6mTbBkfbhcXqhn3ZQ2Nabcdef
"""


def globals_seeds():
    put("globals_script", "real.sql", GLOBALS)
    put("globals_script", "small.sql", "CREATE ROLE a;\nGRANT a TO b;\n")


# --------------------------------------------------------------- pg_archive -----------------

def ustar_member(name, data):
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000600\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = ("%011o\0" % len(data)).encode()
    h[136:148] = ("%011o\0" % 1_700_000_000).encode()
    h[156] = ord("0")
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = ("%06o\0 " % sum(h)).encode()
    return bytes(h) + data + bytes((512 - len(data) % 512) % 512)


def pg_seeds():
    index = {"format": "drkit-postgres-tar", "version": 1, "part_size": 1 << 20, "streams": [
        {"file": "globals.sql", "kind": "globals"},
        {"file": "db-001-app.pgdump", "kind": "database", "database": "app"},
        {"file": "db-002-b.pgdump", "kind": "database", "database": "b"},
    ]}
    out = ustar_member("drkit-postgres.json", json.dumps(index).encode())
    out += ustar_member("globals.sql.00000000", GLOBALS.encode()[:700])
    out += ustar_member("globals.sql.00000001", GLOBALS.encode()[700:])
    out += ustar_member("db-001-app.pgdump.00000000", b"PGDMP\x01\x0e\x00" + bytes(100))
    out += ustar_member("db-001-app.pgdump.00000001", b"more")
    out += ustar_member("db-002-b.pgdump.00000000", b"PGDMP\x01\x0f\x00")
    out += bytes(1024)
    put("pg_archive", "multi.tar", out)
    put("pg_archive", "plain.pgdump", b"PGDMP\x01\x0e\x00\x04\x08\x01\x01")


# ---------------------------------------------------------------- manifest -----------------

def manifest_seeds():
    m = {
        "format_version": 1,
        "id": "20260102T030405Z-abcdef",
        "job": "db",
        "driver": "docker-volume",
        "started_at": "2026-01-02T03:04:05.000Z",
        "finished_at": "2026-01-02T03:04:06.123Z",
        "data": {
            "key": "db/20260102T030405Z-abcdef/data.tar.zst",
            "compression": "zstd",
            "compression_level": 3,
            "encryption": "none",
            "raw_size": 10240,
            "raw_sha256": "00" * 32,
            "stored_size": 200,
            "stored_sha256": "11" * 32,
        },
        "source": {"volume": "app_data", "engine": "24.0"},
        "stats": {"entries": 3, "files": 2, "bytes": 5, "empty": False,
                  "digest": "sha256:" + "22" * 32},
        "warnings": ["an empty database"],
        "suspect": {"reasons": ["the source shrank by 90%"]},
        "drkit_version": "0.1.0",
        "host": "h",
    }
    put("manifest", "manifest.json", json.dumps(m, indent=2))
    m2 = dict(m, driver="sqlite", suspect=None, warnings=[])
    m2["data"] = dict(m["data"], compression="none")
    del m2["suspect"]
    put("manifest", "plain.json", json.dumps(m2))
    put("manifest", "accepted.json", json.dumps({
        "job": "db", "backup_id": "20260102T030405Z-abcdef",
        "accepted_at": "2026-01-03T00:00:00Z", "by": "root", "host": "h", "reason": "ok"}))


# ------------------------------------------------------------------ guard ------------------

def guard_seeds():
    # Format (see fuzz_targets/guard.rs): argv lines, then "\x1e", then KEY=VALUE env lines,
    # then for each file "\x1e" + path + "\n" + content.
    rs = "\x1e"
    put("guard", "compose_down.txt", "docker\ncompose\n-p\nshop\ndown\n-v")
    put("guard", "compose_env.txt", "sudo\n-E\ndocker-compose\n--env-file\nprod.env\ndown\n--volumes"
        + rs + "HOME=/root\nCOMPOSE_FILE=a.yml:b.yml"
        + rs + "/work/proj/prod.env\nCOMPOSE_PROJECT_NAME=\"shop\"  # comment\n"
        + rs + "/work/proj/a.yml\nname: ${PROJECT:-fallback}\nservices:\n  web:\n    image: x\n")
    put("guard", "volume_rm.txt", "env\n-i\nFOO=1\ndocker\n-H\ntcp://h:2375\nvolume\nrm\n-f\na\nb")
    put("guard", "prune.txt", "docker\nsystem\nprune\n--volumes\n-af\n--filter\nlabel=x")
    put("guard", "shell.txt", "bash\n-c\ncd /srv && docker compose -f 'my file.yml' rm -sv web")
    put("guard", "rm.txt", "nice\n-n\n5\ntimeout\n10\ndocker\ncontainer\nrm\n-fv\nc1")


if __name__ == "__main__":
    tar_seeds()
    mongo_seeds()
    globals_seeds()
    pg_seeds()
    manifest_seeds()
    guard_seeds()
    print("seeds written to", os.path.join(HERE, "corpus"))
