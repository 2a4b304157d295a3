"""A fast reader of ``ListObjectsV2`` pages, plugged into botocore.

botocore turns every page into a tree of dicts through its generic XML parser (about
35 µs of CPU per key): most of a listing's client time. This parser reads the four
fields a plan needs straight from the page's bytes with a few regular expressions,
and hands botocore the same dict its own parser would — keys decoded as botocore
decodes them (``EncodingType=url``: ``unquote_plus``, so ``+`` is a space, as
SeaweedFS writes it) — so signing, credentials, endpoints, retries and pagination stay
botocore's. Any other operation, any error answer, and any page this parser does not
recognise go to botocore's own parser.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from botocore.parsers import ResponseParserFactory

_CONTENTS = re.compile(rb"<Contents>(.*?)</Contents>", re.S)
_PREFIXES = re.compile(rb"<CommonPrefixes>\s*<Prefix>(.*?)</Prefix>\s*</CommonPrefixes>", re.S)


def _field(name: bytes) -> re.Pattern:
    return re.compile(rb"<" + name + rb">(.*?)</" + name + rb">", re.S)


_KEY, _ETAG, _SIZE, _MODIFIED = (_field(n) for n in (b"Key", b"ETag", b"Size", b"LastModified"))
_TRUNCATED, _NEXT, _ENCODING, _COUNT = (
    _field(n) for n in (b"IsTruncated", b"NextContinuationToken", b"EncodingType", b"KeyCount")
)
_AWS_ORDER = re.compile(
    rb"<Contents><Key>([^<]*)</Key><LastModified>([^<]*)</LastModified><ETag>([^<]*)</ETag>"
    rb"(?:<Checksum[A-Za-z]*>[^<]*</Checksum[A-Za-z]*>)*<Size>([0-9]+)</Size>"
)
_ENTITY = re.compile(r"&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _entity(m: re.Match) -> str:
    name = m.group(1)
    if name[0] == "#":
        return chr(int(name[2:], 16) if name[1] in "xX" else int(name[1:]))
    return _NAMED[name]


def _text(raw: bytes) -> str:
    """XML character data: UTF-8, with XML's five entities and character references."""
    text = raw.decode("utf-8")
    return _ENTITY.sub(_entity, text) if "&" in text else text


def _block(block: bytes) -> tuple:
    """(key, last modified, etag, size) of one ``<Contents>`` block, in any order."""
    found = [p.search(block) for p in (_KEY, _MODIFIED, _ETAG, _SIZE)]
    return tuple(None if m is None else m.group(1) for m in found)


class _NotAListing(Exception):
    pass


def parse_list_page(body: bytes) -> dict:
    """The dict botocore makes of a ``ListObjectsV2`` page (the parts a listing uses:
    ``Contents`` with ``Key``, ``Size``, ``ETag``, ``LastModified``; ``CommonPrefixes``;
    ``IsTruncated``, ``NextContinuationToken``, ``KeyCount``), keys already decoded."""
    if b"<ListBucketResult" not in body[:512]:
        raise _NotAListing
    head = body.split(b"<Contents>", 1)[0]
    tail = body.rsplit(b"</Contents>", 1)[-1]
    encoding = _ENCODING.search(head) or _ENCODING.search(tail)
    encoded = encoding is not None and encoding.group(1) == b"url"
    decode = unquote_plus if encoded else None
    # AWS's own element order, in one pass; any other order is read block by block.
    rows = _AWS_ORDER.findall(body)
    if len(rows) != body.count(b"<Contents>"):
        rows = [_block(b) for b in _CONTENTS.findall(body)]
    contents = []
    for key, modified, etag, size in rows:
        key = _text(key)
        if decode is not None and ("%" in key or "+" in key):
            key = decode(key)
        contents.append({
            "Key": key,
            "ETag": None if etag is None else _text(etag),
            "Size": None if size is None else int(size),
            "LastModified": None if modified is None else modified.decode("ascii"),
        })
    parsed: dict = {"Contents": contents} if contents else {}
    prefixes = [_text(p) for p in _PREFIXES.findall(tail)]
    if prefixes:
        parsed["CommonPrefixes"] = [{"Prefix": decode(p) if decode else p} for p in prefixes]
    truncated = _TRUNCATED.search(head) or _TRUNCATED.search(tail)
    parsed["IsTruncated"] = truncated is not None and truncated.group(1) == b"true"
    token = _NEXT.search(head) or _NEXT.search(tail)
    if token:
        parsed["NextContinuationToken"] = _text(token.group(1))
    count = _COUNT.search(head) or _COUNT.search(tail)
    if count:
        parsed["KeyCount"] = int(count.group(1))
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
        except (_NotAListing, AttributeError, ValueError, UnicodeDecodeError):
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
