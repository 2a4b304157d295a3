"""The fast ListObjectsV2 page reader (reconciler.s3pages) against botocore's own parser."""

from __future__ import annotations

from urllib.parse import quote, quote_plus, unquote_plus
from xml.sax.saxutils import escape

import botocore.session
from botocore.parsers import RestXMLParser
from hypothesis import given, settings, strategies as st

from reconciler.s3pages import ListingParserFactory, parse_list_page
from reconciler.sources import S3Source

_model = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")

keys = st.lists(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12), max_size=6, unique=True)


def page(objects, prefixes=(), encode=quote_plus, truncated=False, token=None, tail_fields=False) -> bytes:
    """A ListObjectsV2 answer as S3 (or SeaweedFS, with ``+`` for spaces) writes it."""
    top = [f"<Name>b</Name><Prefix></Prefix><KeyCount>{len(objects)}</KeyCount><MaxKeys>1000</MaxKeys>"]
    fields = [f"<EncodingType>url</EncodingType><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
    if token:
        fields.append(f"<NextContinuationToken>{escape(token)}</NextContinuationToken>")
    body = "".join(
        f"<Contents><Key>{escape(encode(k))}</Key><LastModified>2026-11-21T10:00:00.000Z</LastModified>"
        f"<ETag>&quot;{i:032x}&quot;</ETag><Size>{i}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for i, k in enumerate(objects)
    ) + "".join(f"<CommonPrefixes><Prefix>{escape(encode(p))}</Prefix></CommonPrefixes>" for p in prefixes)
    parts = top + ([body] + fields if tail_fields else fields + [body])
    xml = '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    return (xml + "".join(parts) + "</ListBucketResult>").encode("utf-8")


def botocores(body: bytes) -> dict:
    parsed = RestXMLParser(timestamp_parser=str).parse(
        {"body": body, "headers": {}, "status_code": 200}, _model.output_shape)
    for o in parsed.get("Contents", []):
        o["Key"] = unquote_plus(o["Key"])
    for p in parsed.get("CommonPrefixes", []):
        p["Prefix"] = unquote_plus(p["Prefix"])
    return parsed


@settings(max_examples=200)
@given(keys, keys, st.booleans(), st.sampled_from([quote_plus, lambda k: quote(k, safe="/")]), st.booleans())
def test_pages_read_as_botocore_reads_them(objects, prefixes, truncated, encode, tail_fields):
    body = page(objects, prefixes, encode, truncated, "tok&en/+=" if truncated else None, tail_fields)
    ours, theirs = parse_list_page(body), botocores(body)
    assert [(o["Key"], o["ETag"], o["Size"], o["LastModified"]) for o in ours.get("Contents", [])] == [
        (o["Key"], o["ETag"], o["Size"], o["LastModified"]) for o in theirs.get("Contents", [])
    ]
    assert ours.get("CommonPrefixes", []) == theirs.get("CommonPrefixes", [])
    assert ours["IsTruncated"] == theirs["IsTruncated"]
    assert ours.get("NextContinuationToken") == theirs.get("NextContinuationToken")


def test_keys_of_every_kind_list_through_the_fast_parser(bucket):
    odd = ["a b/P/1.jpg", "a+b/P/2.jpg", "Q&A #1/P/3.jpg", "Zoë/P/ü.jpg", "ctl\x01/P/\x1f.jpg", "pct%41/P/x.jpg",
           "lt<gt>/P/'q\".jpg", "tab\t/P/y.jpg"]
    bucket.put(*odd)
    source = S3Source(bucket.name, max_workers=1)
    client = source.client()
    assert isinstance(client._endpoint._response_parser_factory, ListingParserFactory)
    assert sorted(o.key for o in source.list()) == sorted(odd)


def test_pages_in_another_element_order_read_the_same():
    body = page(["a b/P/1.jpg", "x&y/P/2.jpg"])
    # MinIO-like: Size before ETag, an Owner block inside
    other = body.replace(b"<ETag>", b"<Owner><ID>o</ID></Owner><ETag>")
    assert parse_list_page(other)["Contents"] == parse_list_page(body)["Contents"]
    assert [o["Key"] for o in parse_list_page(other)["Contents"]] == ["a b/P/1.jpg", "x&y/P/2.jpg"]
