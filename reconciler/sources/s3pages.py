"""A fast reader of ``ListObjectsV2`` pages, plugged into botocore.

botocore turns every page into a tree of dicts through its generic XML parser (about
20–35 µs of CPU per key): most of a listing's client time. This reader takes the four
fields a plan needs straight from the page's bytes with a few regular expressions, and
hands botocore the same dict its own parser would — keys decoded as botocore decodes
them (``EncodingType=url``: ``unquote_plus``, so ``+`` is a space, as SeaweedFS writes
it) — so signing, credentials, endpoints, retries and pagination stay botocore's.

XML does not fix the order of a page's elements, and servers differ (AWS writes the
top-level fields first, moto some after the objects; a server walking one sorted
namespace may interleave ``<Contents>`` and ``<CommonPrefixes>``), so nothing here
depends on it. A page is only read here if it checks out: every ``<Contents>`` and
``<CommonPrefixes>`` block was read, ``KeyCount`` (when the page has one) equals the
objects plus the prefixes read, ``IsTruncated`` is there and a truncated page carries a
continuation token, and the text is XML (no comment, CDATA, control character or
unknown entity). Any other page, any other operation and any error answer go to
botocore's own parser: a listing that silently lost a prefix would plan the deletion of
everything under it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from botocore.parsers import ResponseParserFactory

log = logging.getLogger("reconciler.s3pages")

# AWS's order inside <Contents> (also moto's, MinIO's and Ceph's): the four fields in one
# regular expression, the page split by it in one pass. The split leaves the page's
# other text (the rest of each block, the prefixes, the top-level fields) in between.
_AWS_CONTENTS = re.compile(
    rb"<Contents><Key>([^<]*)</Key><LastModified>([^<]*)</LastModified><ETag>([^<]*)</ETag>"
    rb"(?:<Checksum[A-Za-z]*>[^<]*</Checksum[A-Za-z]*>)*<Size>([0-9]+)</Size>"
)
_CONTENTS = re.compile(rb"<Contents>(.*?)</Contents>", re.S)
_PREFIXES = re.compile(rb"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>")


def _field(name: bytes) -> re.Pattern:
    return re.compile(rb"<" + name + rb">([^<]*)</" + name + rb">")


_KEY, _ETAG, _SIZE, _MODIFIED = (_field(n) for n in (b"Key", b"ETag", b"Size", b"LastModified"))
_TOP = {n.decode(): _field(n) for n in (b"IsTruncated", b"NextContinuationToken", b"KeyCount", b"EncodingType")}
_ENTITY = re.compile(r"&(?:(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);)?")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
# Characters below U+0020 that XML 1.0 forbids even as references (NUL is checked apart:
# it separates fields decoded together).
_CONTROL = bytes(range(1, 9)) + b"\x0b\x0c" + bytes(range(0x0e, 0x20))


class Unsure(Exception):
    """A page this reader does not vouch for: botocore's parser reads it."""


def _xml_char(code: int) -> bool:
    return code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF


def _entity(m: re.Match) -> str:
    name = m.group(1)
    if name is None:
        raise Unsure("an & that starts no entity")
    if name[0] != "#":
        return _NAMED[name]
    code = int(name[2:], 16) if name[1] in "xX" else int(name[1:])
    if not _xml_char(code):
        raise Unsure(f"a reference to character {code}, which XML does not allow")
    return chr(code)


def _text(raw: bytes, url: bool = False) -> str:
    """XML character data: UTF-8, with XML's five entities and character references;
    URL-decoded with ``url``."""
    if len(raw.translate(None, _CONTROL)) != len(raw):
        raise Unsure("a control character, which XML does not allow")
    text = raw.decode("utf-8")
    if "&" in text:
        # Every ETag holds two &quot;: replaced at C speed. In XML every & starts a
        # reference, so any "&quot;" found is one.
        text = text.replace("&quot;", '"')
        if "&" in text:
            text = _ENTITY.sub(_entity, text)
    if url and ("%" in text or "+" in text):
        text = unquote_plus(text)
    return text


def _texts(raws: list[bytes], url: bool = False) -> list[str]:
    """:func:`_text` of many fields, decoded in one pass joined by NUL, which XML text
    cannot hold (unquote_plus works on runs of text, and a NUL ends any run: the
    decoding of the whole is the decodings of its parts joined). A field that decodes to
    a NUL (``%00``) shows in the count, and the fields are decoded one by one."""
    if not raws:
        return []
    found = _text(b"\x00".join(raws), url).split("\x00")
    return found if len(found) == len(raws) else [_text(r, url) for r in raws]


def _columns(body: bytes) -> tuple[list[list[bytes]], bytes]:
    """The keys, last-modified times, ETags and sizes of every ``<Contents>`` block (raw
    bytes, in page order), and the page without them."""
    parts = _AWS_CONTENTS.split(body)
    rest = b"".join(parts[::5])
    if b"<Contents" not in rest:
        return [parts[1::5], parts[2::5], parts[3::5], parts[4::5]], rest
    # A block in another order (Owner inside, Size before ETag, whitespace): every block
    # read on its own, each field wherever it stands in it.
    parts = _CONTENTS.split(body)
    rest = b"".join(parts[::2])
    if b"<Contents" in rest:
        raise Unsure("a <Contents> block of another shape")
    if b"<!" in body:
        raise Unsure("a comment or CDATA section")
    rows = [[m.group(1) if (m := p.search(block)) else None for p in (_KEY, _MODIFIED, _ETAG, _SIZE)]
            for block in parts[1::2]]
    if any(None in row for row in rows):
        raise Unsure("a <Contents> block without its Key, LastModified, ETag or Size")
    return [list(column) for column in zip(*rows)], rest


def _top(rest: bytes) -> dict[str, bytes | None]:
    """The top-level fields a listing needs (None when absent); each at most once."""
    found = {}
    for name, pattern in _TOP.items():
        values = pattern.findall(rest)
        if len(values) > 1:
            raise Unsure(f"{name} {len(values)} times")
        found[name] = values[0] if values else None
    return found


def parse_list_page(body: bytes) -> dict:
    """The dict botocore makes of a ``ListObjectsV2`` page (the parts a listing uses:
    ``Contents`` with ``Key``, ``Size``, ``ETag``, ``LastModified``; ``CommonPrefixes``;
    ``IsTruncated``, ``NextContinuationToken``, ``KeyCount``), keys already decoded.
    Raises :class:`Unsure` for a page it will not vouch for (see the module's doc)."""
    if b"<ListBucketResult" not in body[:512]:
        raise Unsure("not a ListBucketResult")
    if b"\x00" in body:
        raise Unsure("a NUL byte, which XML does not allow")
    if b"\r" in body:  # XML's end-of-line handling, as botocore's parser (expat) does it
        body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    (keys, modified, etags, sizes), rest = _columns(body)
    if b"<!" in rest:
        raise Unsure("a comment or CDATA section")
    prefixes = _PREFIXES.findall(rest)
    if rest.count(b"<CommonPrefixes") != len(prefixes):
        raise Unsure("a <CommonPrefixes> block of another shape")
    top = _top(rest)
    truncated = top["IsTruncated"]
    if truncated not in (b"true", b"false"):
        raise Unsure(f"IsTruncated is {truncated!r}")
    if truncated == b"true" and not top["NextContinuationToken"]:
        raise Unsure("a truncated page without a continuation token")
    if top["KeyCount"] is not None and int(top["KeyCount"]) != len(keys) + len(prefixes):
        raise Unsure(f"KeyCount {int(top['KeyCount'])}, but {len(keys)} object(s) and {len(prefixes)} prefix(es)")
    url = top["EncodingType"] == b"url"
    parsed: dict = {}
    if keys:
        parsed["Contents"] = [
            {"Key": k, "LastModified": m, "ETag": e, "Size": int(s)}
            for k, m, e, s in zip(_texts(keys, url), _texts(modified), _texts(etags), sizes)
        ]
    if prefixes:
        parsed["CommonPrefixes"] = [{"Prefix": p} for p in _texts(prefixes, url)]
    parsed["IsTruncated"] = truncated == b"true"
    if top["NextContinuationToken"] is not None:
        parsed["NextContinuationToken"] = _text(top["NextContinuationToken"])
    if top["KeyCount"] is not None:
        parsed["KeyCount"] = int(top["KeyCount"])
    return parsed


class _ListingParser:
    def __init__(self, fallback) -> None:
        self.fallback = fallback

    def parse(self, response: dict, shape):
        if (shape is None or shape.name != "ListObjectsV2Output" or response.get("status_code") != 200
                or not isinstance(response.get("body"), (bytes, bytearray))):
            return self.fallback.parse(response, shape)
        try:
            parsed = parse_list_page(bytes(response["body"]))
        except (Unsure, ValueError) as e:  # ValueError: not UTF-8, not a number
            log.debug("ListObjectsV2 page read by botocore's parser: %s", e)
            return self.fallback.parse(response, shape)
        headers = response.get("headers") or {}
        parsed["ResponseMetadata"] = {
            "RequestId": headers.get("x-amz-request-id", ""),
            "HostId": headers.get("x-amz-id-2", ""),
            "HTTPStatusCode": 200,
            "HTTPHeaders": headers,
        }
        return parsed


class ListingParserFactory(ResponseParserFactory):
    """botocore's parser factory, with the fast ``ListObjectsV2`` parser in front of
    the ``rest-xml`` protocol's parser."""

    def create_parser(self, protocol_name: str):
        parser = super().create_parser(protocol_name)
        return _ListingParser(parser) if protocol_name == "rest-xml" else parser
