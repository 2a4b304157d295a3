"""CPU of the fast ``ListObjectsV2`` page reader per key, against botocore's own parser.

    python bench/s3pages.py [--keys 1000] [--repeat 200]

One page of ``--keys`` objects as Amazon S3 writes it (``encoding-type=url``, AWS's
element order, a checksum algorithm per object) is read ``--repeat`` times by
:func:`reconciler.sources.s3pages.parse_list_page`; the best of five rounds, in µs per key, is
printed with botocore's ``RestXMLParser`` on the same page for scale (fewer rounds: it
is ~10 times slower). Twice: keys of plain ASCII, and keys with spaces (``%20`` in the
page, each key URL-decoded). Pure CPU, no I/O.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reconciler.sources.s3pages import parse_list_page  # noqa: E402


def aws_page(n: int, space: str) -> bytes:
    objects = "".join(
        f"<Contents><Key>{quote(f'Model{space}{i // 500}/Post{space}{i // 50}/{i:04d}.jpg')}</Key>"
        f"<LastModified>2026-11-21T10:00:00.000Z</LastModified><ETag>&quot;{i:032x}&quot;</ETag>"
        f"<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType>"
        f"<Size>{1000 + i}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for i in range(n)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>media</Name>'
        f"<Prefix>Model%200/</Prefix><KeyCount>{n}</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType>"
        "<IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="
        f"</NextContinuationToken>{objects}</ListBucketResult>"
    ).encode()


def per_key_us(parse, body: bytes, keys: int, repeat: int) -> float:
    return min(timeit.repeat(lambda: parse(body), number=repeat, repeat=5)) / repeat / keys * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    import botocore.session
    from botocore.parsers import RestXMLParser

    shape = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape
    botocore_parser = RestXMLParser(timestamp_parser=str)
    for space, what in (("", "plain keys"), (" ", "keys with spaces")):
        body = aws_page(args.keys, space)
        assert len(parse_list_page(body)["Contents"]) == args.keys
        response = {"body": body, "headers": {}, "status_code": 200}
        ours = per_key_us(parse_list_page, body, args.keys, args.repeat)
        theirs = per_key_us(lambda _: botocore_parser.parse(response, shape), body, args.keys, max(1, args.repeat // 20))
        print(f"{args.keys}-key page, {what} ({len(body):,} bytes): reconciler.sources.s3pages {ours:.2f} µs/key, "
              f"botocore's parser {theirs:.1f} µs/key")


if __name__ == "__main__":
    main()
