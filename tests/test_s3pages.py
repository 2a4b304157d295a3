"""The fast ListObjectsV2 page reader (reconciler.s3pages) against botocore's own parser.

What a listing sees of a page is the parser's dict after botocore's own handler that
URL-decodes the keys (``decode_list_object_v2``). With the fast reader in front it must
see exactly what it sees without, whatever the order of the page's elements: a prefix
lost from a delimited page is a model planned for deletion.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, quote_plus
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.handlers import decode_list_object_v2
from botocore.parsers import RestXMLParser
from hypothesis import given, settings, strategies as st

from reconciler.sources.s3pages import ListingParserFactory, Unsure, parse_list_page
from reconciler.sources import S3Source

from .conftest import LONG_KEY, ODD_KEYS

_shape = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape

AWKWARD_KEYS = ODD_KEYS + [
    LONG_KEY, "a b/P/1.jpg", "a+b/P/2.jpg", "Q&A #1/P/3.jpg", "Zoë/P/ü.jpg", "ctl\x01/P/\x1f.jpg", "pct%41/P/x.jpg",
    "lt<gt>/P/'q\".jpg", "tab\t/P/y.jpg", "cr\r\nlf\r/P/z.jpg", "nul\x00/P/0.jpg", "]]>/P/<![CDATA[x]]>.jpg",
]

# How servers write a key: URL-encoded (encoding-type=url) as AWS and moto do, with + for
# a space as SeaweedFS does, or as XML text (no EncodingType in the answer).
ENCODINGS = {"url": lambda k: quote(k, safe="/"), "url, + for a space": lambda k: quote_plus(k, safe="/"), "none": None}


def in_xml(text: str) -> bool:
    """Whether XML 1.0 can hold ``text`` as character data."""
    return all(c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD or ord(c) >= 0x10000 for c in text)


def keys(encoded: bool):
    text = st.one_of(st.sampled_from(AWKWARD_KEYS), st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12))
    return st.lists(text if encoded else text.filter(in_xml), max_size=6, unique=True)


def xml_text(text: str, references: bool) -> str:
    """Character data as a server writes it: escaped, non-ASCII as is or as character references."""
    text = escape(text, {'"': "&quot;", "'": "&apos;"})
    return "".join(c if ord(c) < 0x80 else f"&#x{ord(c):X};" for c in text) if references else text


@st.composite
def pages(draw) -> tuple[bytes, str | None]:
    """A ListObjectsV2 page in any element order, interleavings included: top-level
    fields, objects (their fields in AWS's order or any other, pretty-printed or not)
    and prefixes shuffled together. With the lie it tells (None: none), when its counts
    do not add up."""
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    encode = ENCODINGS[encoding] or (lambda k: k)
    references = draw(st.booleans())
    objects, prefixes = draw(keys(encoding != "none")), draw(keys(encoding != "none"))
    sep = draw(st.sampled_from(["", "\n  ", "\r\n  "]))
    lie = draw(st.sampled_from([None, None, None, "KeyCount", "no continuation token"]))
    entries = []
    for i, key in enumerate(objects):
        quote_mark = draw(st.sampled_from(['"', "&quot;"]))
        fields = [f"<Key>{xml_text(encode(key), references)}</Key>", "<LastModified>2026-11-21T10:00:00.000Z</LastModified>",
                  f"<ETag>{quote_mark}{i:032x}{quote_mark}</ETag>", f"<Size>{i}</Size>", "<StorageClass>STANDARD</StorageClass>"]
        if draw(st.booleans()):
            fields.insert(3, "<ChecksumAlgorithm>CRC32</ChecksumAlgorithm>")
        if draw(st.booleans()):  # MinIO, Ceph, or anyone: another order, an Owner inside
            fields = draw(st.permutations(fields + ["<Owner><ID>o</ID><DisplayName>d</DisplayName></Owner>"]))
        entries.append("<Contents>" + sep + sep.join(fields) + sep + "</Contents>")
    entries += [f"<CommonPrefixes>{sep}<Prefix>{xml_text(encode(p), references)}/</Prefix>{sep}</CommonPrefixes>"
                for p in prefixes]
    truncated = draw(st.booleans()) or lie == "no continuation token"
    fields = ["<Name>b</Name>", draw(st.sampled_from(["<Prefix></Prefix>", "<Prefix/>"])), "<MaxKeys>1000</MaxKeys>",
              "<Delimiter>/</Delimiter>", f"<IsTruncated>{str(truncated).lower()}</IsTruncated>"]
    if encoding != "none":
        fields.append("<EncodingType>url</EncodingType>")
    if truncated and lie != "no continuation token":
        fields.append(f"<NextContinuationToken>{escape('tok&en/+=%2F')}</NextContinuationToken>")
    count = len(objects) + len(prefixes)
    if lie == "KeyCount":
        fields.append(f"<KeyCount>{count + draw(st.sampled_from([-1, 1] if count else [1]))}</KeyCount>")
    elif draw(st.booleans()):
        fields.append(f"<KeyCount>{count}</KeyCount>")
    elements = draw(st.permutations(fields + entries))
    head = draw(st.sampled_from(['<?xml version="1.0" encoding="UTF-8"?>\n', ""]))
    body = (head + '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + sep
            + sep.join(elements) + sep + "</ListBucketResult>")
    return body.encode("utf-8"), lie


def what_a_listing_sees(parser, body: bytes) -> dict:
    """A page as ``S3Source`` reads it: the parser's dict after botocore's key-decoding
    handler, reduced to the fields a listing uses."""
    parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, _shape)
    decode_list_object_v2(parsed, context={"encoding_type_auto_set": True})
    return {
        "Contents": [{f: o.get(f) for f in ("Key", "LastModified", "ETag", "Size")} for o in parsed.get("Contents", [])],
        "CommonPrefixes": parsed.get("CommonPrefixes", []),
        **{f: parsed.get(f) for f in ("IsTruncated", "NextContinuationToken", "KeyCount")},
    }


def _ours():
    factory = ListingParserFactory()
    factory.set_parser_defaults(timestamp_parser=str)  # as S3Source sets it
    return factory.create_parser("rest-xml")


ours, botocores = _ours(), RestXMLParser(timestamp_parser=str)


@settings(max_examples=400)
@given(pages())
def test_a_listing_sees_every_page_as_botocore_reads_it(page):
    body, lie = page
    assert what_a_listing_sees(ours, body) == what_a_listing_sees(botocores, body)
    if lie is None:
        parse_list_page(body)  # read by the fast reader itself, not handed on
    else:
        with pytest.raises(Unsure):
            parse_list_page(body)


# A page as moto writes it (the top-level listing of a bucket with one file at the top).
MOTO_PAGE = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<IsTruncated>false</IsTruncated><Contents><Key>top.jpg</Key><LastModified>2026-12-07T09:45:08.000Z</LastModified>"
    b'<ETag>"9dd4e461268c8034f5c8564e155c67a6"</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Size>1</Size>'
    b"<StorageClass>STANDARD</StorageClass></Contents><Name>bkt-page</Name><Prefix/><Delimiter>/</Delimiter>"
    b"<MaxKeys>1000</MaxKeys><CommonPrefixes><Prefix>M/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>a%20b/</Prefix>"
    b"</CommonPrefixes><CommonPrefixes><Prefix>z%2Bz/</Prefix></CommonPrefixes><EncodingType>url</EncodingType>"
    b"<KeyCount>4</KeyCount></ListBucketResult>"
)


def test_prefixes_before_the_objects_are_read():
    prefixes = b"".join(f"<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>".encode() for p in ("M/", "a%20b/", "z%2Bz/"))
    first = MOTO_PAGE.replace(prefixes, b"").replace(b"<IsTruncated>", prefixes + b"<IsTruncated>")
    for page in (MOTO_PAGE, first):
        parsed = parse_list_page(page)
        assert [p["Prefix"] for p in parsed["CommonPrefixes"]] == ["M/", "a b/", "z+z/"]
        assert [o["Key"] for o in parsed["Contents"]] == ["top.jpg"]
        assert parsed["KeyCount"] == 4 and parsed["IsTruncated"] is False


@pytest.mark.parametrize("page", [
    MOTO_PAGE.replace(b"<KeyCount>4", b"<KeyCount>5"),  # an object or prefix the reader did not find
    MOTO_PAGE.replace(b"<Prefix>M/</Prefix>", b"<Prefix>M/</Prefix><!-- note -->"),
    MOTO_PAGE.replace(b"<Prefix>M/</Prefix>", b'<Prefix xml:space="preserve">M/</Prefix>'),
    MOTO_PAGE.replace(b"<Key>top.jpg</Key>", b"<Key><![CDATA[top.jpg]]></Key>"),
    MOTO_PAGE.replace(b"<IsTruncated>false", b"<IsTruncated>true"),  # truncated, and no token to go on with
    MOTO_PAGE.replace(b"<IsTruncated>false</IsTruncated>", b""),
    MOTO_PAGE.replace(b"top.jpg", b"R&amp;D&#0;.jpg"),  # not XML: botocore's parser says so
], ids=["KeyCount", "comment", "attribute", "CDATA", "no token", "no IsTruncated", "not XML"])
def test_a_page_the_reader_does_not_vouch_for_goes_to_botocore(page):
    with pytest.raises(Unsure):
        parse_list_page(page)
    try:
        expected = what_a_listing_sees(botocores, page)
    except Exception as e:
        with pytest.raises(type(e)):
            what_a_listing_sees(ours, page)
    else:
        assert what_a_listing_sees(ours, page) == expected


def test_keys_of_every_kind_list_through_the_fast_parser(bucket, caplog):
    odd = ODD_KEYS + [LONG_KEY, "a b/P/1.jpg", "a+b/P/2.jpg", "ctl\x01/P/\x1f.jpg", "pct%41/P/x.jpg", "tab\t/P/y.jpg",
                      "top level.jpg", "z top+level.jpg"]
    bucket.put(*odd)
    source = S3Source(bucket.name, max_workers=1)
    client = source.client()
    assert isinstance(client._endpoint._response_parser_factory, ListingParserFactory)
    caplog.set_level(logging.DEBUG, logger="reconciler.s3pages")
    assert sorted(o.key for o in source.list()) == sorted(odd)
    handed_on = [r.getMessage() for r in caplog.records if r.name == "reconciler.s3pages"]
    assert handed_on == []  # every page of moto's was read by the fast reader
