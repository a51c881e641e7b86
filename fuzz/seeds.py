#!/usr/bin/env python3
"""Builds the seed inputs of every fuzz target from the interop vectors in
../shared/vectors and from the repository's own files, into OUT/<target>/ (default
target/seeds). The committed corpus/<target>/ is what the fuzzers made of these seeds,
minimised with `-merge=1` (see docs/security.md, "Fuzzing"). Python 3, standard library.
"""
import email
import email.policy
import os
import shutil
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
VECTORS = ROOT.parent / "shared" / "vectors"
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else FUZZ / "target" / "seeds"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name.replace("/", "_").replace(" ", "_")).write_bytes(data)


def files(*patterns, base=VECTORS):
    for pattern in patterns:
        yield from sorted(base.glob(pattern))


def soap_root(dump):
    """The root part of a MIME dump (HTTP-style headers, blank line, body), else None."""
    msg = email.message_from_bytes(dump, policy=email.policy.compat32)
    if not msg.is_multipart():
        return None
    parts = msg.get_payload()
    return parts[0].get_payload(decode=True) if parts else None


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    dumps = list(files("phase4/receipts/*", "pyas4/*/*.http", "phase4/negative/*.mime"))
    envelopes = list(files("phase4/ebms/*.xml", "phase4/negative/*.xml", "holodeck/*.xml",
                           "oots-france/reference/messages/*.entete.xml",
                           "oots-france/incoming/**/*.xml",
                           "governikus-edm/samples/**/*header*.xml"))
    for f in dumps:
        put("mime", f.relative_to(VECTORS).as_posix(), f.read_bytes())
        put("ws_security", f.relative_to(VECTORS).as_posix(), f.read_bytes())
        root = soap_root(f.read_bytes())
        if root:
            put("soap", f.relative_to(VECTORS).as_posix() + ".root.xml", root)
    for f in envelopes:
        put("soap", f.relative_to(VECTORS).as_posix(), f.read_bytes())
    for f in files("phase4/ebms/UserMessage12.xml", "holodeck/*.xml", "phase4/negative/Wrong*.xml"):
        put("mime", f.relative_to(VECTORS).as_posix(), f.read_bytes())
        put("ws_security", f.relative_to(VECTORS).as_posix(), f.read_bytes())
    # Varti's own signed messages (tests/fuzz_corpus.rs write_ws_security_seeds).
    for f in files("corpus/ws_security/varti-*.http", base=FUZZ):
        put("ws_security", f.name, f.read_bytes())
        put("mime", f.name, f.read_bytes())

    for f in files("oots-france/reference/messages/*.xml", "governikus-edm/samples/**/*.xml",
                   "oots-france/common_services/*.xml"):
        if ".entete." in f.name or "header" in f.name:
            continue
        put("edm", f.relative_to(VECTORS).as_posix(), f.read_bytes())

    pmodes = sorted((ROOT / "pmodes").glob("*.toml"))
    for f in pmodes:
        put("pmode", f.name, f.read_bytes())
    put("pmode", "all.toml", b"\0".join(f.read_bytes() for f in pmodes))
    converted = FUZZ / "target" / "domibus-converted"
    for f in sorted(converted.glob("*/*.toml")):
        put("pmode", "domibus-" + f.parent.name + "-" + f.name, f.read_bytes())
    for d in sorted(p for p in converted.glob("*") if p.is_dir()):
        put("pmode", "domibus-" + d.name + "-all.toml",
            b"\0".join(f.read_bytes() for f in sorted(d.glob("*.toml"))))

    ct = b"multipart/form-data; boundary=XyZ\n"
    meta = (b'{"to_party":"varti-b","service":"urn:varti:test","action":"Deliver",'
            b'"message_id":"m1@varti.test","properties":[{"name":"p","value":"v"}],'
            b'"payloads":[{"part":"file0","mime_type":"application/xml",'
            b'"content_id":"cid:a@varti","properties":[{"name":"CharacterSet","value":"UTF-8"}]},'
            b'{"part":"file1"}]}')
    payload = (VECTORS / "pyas4/oneway-1/payload.orig").read_bytes()[:2048]
    edm = (VECTORS / "oots-france/reference/messages/requete.xml").read_bytes()[:2048]
    def form(*parts):
        body = b""
        for headers, content in parts:
            body += b"--XyZ\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
        return body + b"--XyZ--\r\n"
    meta_h = b'Content-Disposition: form-data; name="metadata"\r\nContent-Type: application/json'
    f0 = b'Content-Disposition: form-data; name="file0"; filename="a.xml"\r\nContent-Type: application/xml'
    f1 = b'Content-Disposition: form-data; name="file1"; filename="b.bin"'
    put("api_multipart", "two-files", ct + form((meta_h, meta), (f0, edm), (f1, payload)))
    put("api_multipart", "metadata-only", ct + form((meta_h, b'{"to_party":"b","service":"s","action":"a"}')))
    put("api_multipart", "missing-part", ct + form((meta_h, meta), (f0, b"x")))
    put("api_multipart", "no-metadata", ct + form((f0, b"x")))
    put("api_multipart", "quoted-boundary", b'multipart/form-data; boundary="XyZ"; charset=utf-8\n'
        + form((meta_h, meta), (f1, b""), (f0, b"<a/>")))
    for target in sorted(os.listdir(OUT)):
        print(target, len(os.listdir(OUT / target)))


if __name__ == "__main__":
    main()
