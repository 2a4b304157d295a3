"""S3 events → runs scoped to the catalogue's top keys: what an event's key names (pure,
for creators, product-images, documents), the webhook (AWS and MinIO bodies), SQS,
deduplication, debouncing, ignored events counted by reason, and bodies that are not
events (never a 500), against the real server, moto's S3 and SQS, and a real PostgreSQL."""

from __future__ import annotations

import json
import time
from urllib.parse import quote_plus

import boto3
import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from reconciler import Settings
from reconciler.catalogue.keys import scope_segment
from reconciler.commands import explain
from reconciler.controller.events import S3Event, parse_body, run_scope, scope_of
from reconciler.controller.leader import LEADER_KEY

from .conftest import CDN, CREATORS, DOCUMENTS, PRODUCTS, SITES
from .serving import Server, serve, start_server, stop_all  # noqa: F401 — serve: the fixture

pytestmark = pytest.mark.slow


def record(bucket: str, key: str, sequencer: str = "0055AED6DCD90281E5", name: str = "ObjectCreated:Put") -> dict:
    """An AWS S3 event record; the key URL-encoded with '+' for spaces, as S3 sends it."""
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-21T10:00:00.000Z", "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "reconciler",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key, safe="/"), "size": 3, "eTag": "abc", "sequencer": sequencer}},
    }


def minio_body(bucket: str, key: str, sequencer: str) -> dict:
    """MinIO's webhook body: its own header around the same records."""
    rec = record(bucket, key, sequencer)
    rec["eventSource"] = "minio:s3"
    rec["s3"]["object"]["contentType"] = "image/jpeg"
    rec["source"] = {"host": "10.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"}
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [rec]}


def event_runs(server) -> list[dict]:
    return [r for r in server.runs() if r["trigger"] == "event"]


def test_parse_body():
    body = {"Records": [record("b", "Zoë Ortiz/Q&A #1/photo 1.jpg")]}
    [e] = parse_body(json.dumps(body).encode())
    assert e.key == "Zoë Ortiz/Q&A #1/photo 1.jpg" and e.bucket == "b"
    assert json.dumps(body).count("Zo%C3%AB+Ortiz") == 1
    assert parse_body(b'{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}') == []
    sns = {"Type": "Notification", "Message": json.dumps(body)}
    assert parse_body(json.dumps(sns)) == parse_body(json.dumps(body))


def about(catalogue, key: str, prefix: str = "", bucket: str = "b") -> tuple:
    """(top key, reason ignored) of an event about ``key`` in ``bucket``, for a source
    ``s3://b/<prefix>``."""
    scope = scope_of(S3Event(bucket, key), catalogue, "b", prefix)
    return scope.top_key, scope.ignored


@pytest.mark.parametrize("catalogue, key, prefix, want", [
    (CREATORS, "media/Alice/Beach/1.jpg", "media/", ("Alice", None)),
    (CREATORS, "media/Alice/notes.txt", "media/", ("Alice", None)),  # skipped, but in Alice's folder
    (CREATORS, "other/Alice/x.jpg", "media/", (None, "outside_prefix")),
    (CREATORS, "media/file.jpg", "media/", (None, "not_in_model_folder")),
    (CREATORS, "Alice/", "", (None, "folder_marker")),
    (CREATORS, "/x.jpg", "", (None, "empty_segment")),
    # The top key is the rule's capture, not the first folder ("products").
    (PRODUCTS, "products/p42/500g/hero-card/front.jpg", "", ("p42", None)),
    (PRODUCTS, "shop/products/p42/1kg/banner/a.jpg", "shop/", ("p42", None)),  # an unknown image type: skipped
    (PRODUCTS, "products/p42/readme.txt", "", (None, "unsupported_extension")),  # products/**: no product
    (PRODUCTS, "README.txt", "", (None, "unmatched")),
    (DOCUMENTS, "acme/invoices/2026-11.pdf", "", ("acme", None)),
    (DOCUMENTS, "acme/notes.txt", "", ("acme", None)),
    (DOCUMENTS, "README.txt", "", (None, "not_in_tenant")),
    (SITES, "eu/acme/index.html", "", ("eu/acme", None)),  # a top key of two columns
])
def test_an_events_key_names_the_top_key_the_catalogue_reads_in_it(catalogue, key, prefix, want):
    assert about(catalogue, key, prefix) == want


def test_events_of_another_bucket_are_ignored():
    assert about(PRODUCTS, "products/p42/500g/hero-card/front.jpg", bucket="other") == (None, "other_bucket")


def test_a_run_for_events_is_scoped_unless_the_catalogue_cannot_be():
    assert run_scope(PRODUCTS, ["p7", "p42", "p7"]) == ["p42", "p7"]
    assert run_scope(SITES, ["eu/acme"]) is None  # its scope cannot be listed: the run plans it whole


# Keys of each catalogue's shapes, which the test cuts short and spoils one folder of.
SHAPES = {CREATORS: ["Alice/Beach/a.jpg", "Alice/profile/icon.png", "Alice/a.jpg"],
          PRODUCTS: ["products/p42/500g/hero-card/a.jpg", "products/p7/250g/banner/b.png"],
          DOCUMENTS: ["acme/invoices/a.pdf", "globex/handbook/drafts/v2.pdf"]}


def variants(key: str):
    parts = key.split("/")
    spoilt = st.tuples(st.integers(0, len(parts) - 1), st.sampled_from(["", "x", "c.txt", "a.jpg", "products"])).map(
        lambda at: parts[:at[0]] + [at[1]] + parts[at[0] + 1:])
    cut = st.just(len(parts)) | st.integers(1, len(parts))
    return st.tuples(st.just(parts) | spoilt, cut).map(lambda t: "/".join(t[0][:t[1]]))


@hsettings(max_examples=200)
@given(data=st.data())
def test_an_events_top_key_is_that_of_its_rows_and_its_run_lists_the_object(data):
    """The top key of the rows ``explain`` says the object makes; and whatever the
    event names, the scoped run's listing (the top folder below the catalogue's literal
    ones) holds the object."""
    catalogue = data.draw(st.sampled_from(list(SHAPES)))
    key = data.draw(st.sampled_from(SHAPES[catalogue]).flatmap(variants))
    prefix = data.draw(st.sampled_from(["", "m/"]))
    top, ignored = about(catalogue, prefix + key, prefix)
    [x] = explain(Settings(cdn_base_url=CDN, catalogue=catalogue), [prefix + key], root=prefix)
    if x.reason is None:
        assert top == x.rows[catalogue.top.name]
    if top is not None:
        folders = "".join(f + "/" for f in scope_segment(catalogue).prefix)
        assert (prefix + key).startswith(prefix + folders + top + "/") and ignored is None
    else:
        assert ignored


def window(sql, run_id: int) -> float:
    """Seconds from a run's first event to the run: at least the debounce window."""
    return sql("SELECT EXTRACT(EPOCH FROM r.created_at - min(e.received_at)) FROM reconciler_runs r "
               "JOIN reconciler_events e ON e.run_id = r.id WHERE r.id = %s GROUP BY r.created_at", (run_id,))[0][0]


def test_webhook_events_make_scoped_runs(serve, bucket, sql):
    bucket.put("Alice/a.jpg", "Alice/Beach/1.jpg", "Zoë Ortiz/Q&A #1/photo 1.jpg", "Bob/Hike/x.jpg")
    s = serve(bucket.url + "/", serve={"debounce": 0.5})
    c = s.client()
    first = s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    assert c.post(f"/api/runs/{first['id']}/apply").json()["status"] == "applied"

    # AWS body: a '+' and unicode key → a run scoped to that model alone.
    bucket.put("Zoë Ortiz/Q&A #1/photo 2.jpg")
    sent = time.monotonic()
    r = c.post("/hooks/s3", json={"Records": [record(bucket.name, "Zoë Ortiz/Q&A #1/photo 2.jpg", "01")]})
    assert r.status_code == 200 and r.json() == {"received": 1, "stored": 1, "duplicates": 0, "ignored": 0,
                                                 "ignored_by_reason": {}}
    # The same event again (same key and sequencer) is one event.
    r = c.post("/hooks/s3", json={"Records": [record(bucket.name, "Zoë Ortiz/Q&A #1/photo 2.jpg", "01")]})
    assert r.json()["duplicates"] == 1
    run = s.wait_run(s.wait_for(lambda: event_runs(s), what="an event run")[0]["id"])
    assert run["scope"] == ["Zoë Ortiz"] and run["status"] == "planned"
    assert run["summary"]["media"] == {"create": 1, "update": 0, "move": 0, "delete": 0}
    assert window(sql, run["id"]) >= 0.5  # the events were gathered for the debounce window first
    print(f"event → scoped run planned: {time.monotonic() - sent:.2f}s (debounce 0.5s)")
    assert sql("SELECT count(*) FROM reconciler_events WHERE run_id = %s", (run["id"],))[0][0] == 1

    # MinIO body for two models; a test event, another bucket, a key outside a model: ignored.
    bucket.delete("Bob/Hike/x.jpg")
    bodies = [
        minio_body(bucket.name, "Bob/Hike/x.jpg", "02"),
        minio_body(bucket.name, "Alice/Beach/1.jpg", "03"),
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket.name},
        {"Records": [record("another-bucket", "Carol/x.jpg", "04"), record(bucket.name, "stray.jpg", "05")]},
    ]
    answers = [c.post("/hooks/s3", json=b).json() for b in bodies]
    assert [a["stored"] for a in answers] == [1, 1, 0, 0]
    assert answers[3]["ignored_by_reason"] == {"not_in_model_folder": 1, "other_bucket": 1}
    runs = s.wait_for(lambda: len(event_runs(s)) == 2 and event_runs(s), what="a second event run")
    run = s.wait_run(runs[0]["id"])
    assert run["scope"] == ["Alice", "Bob"]
    assert run["summary"]["media"]["delete"] == 1 and run["summary"]["post"]["delete"] == 1
    assert all("Carol" not in (r["scope"] or []) for r in s.runs())
    metrics = c.get("/metrics").text
    assert 'reconciler_events_received_total{via="webhook"} 6.0' in metrics


@pytest.fixture
def serve_shop(tmp_path, installed_shop):
    """``serve_shop(source, serve={...})`` → ``reconciler serve --catalogue product-images`` on the shop's database."""

    def start(source, **kwargs) -> Server:
        return start_server(tmp_path, installed_shop, str(source), "--catalogue", "product-images", **kwargs)

    try:
        yield start
    finally:
        stop_all()


def test_webhook_events_make_runs_scoped_to_products(serve_shop, bucket):
    """``products/p7/…`` is about product p7 (not "products"); a product whose object
    came and went before the run is nothing to do, not an error; keys that name no
    product are ignored and counted by reason, in the answer and in the metrics."""
    bucket.put("products/p42/500g/hero-card/front.jpg")
    s = serve_shop(bucket.url, serve={"debounce": 0.5})
    c = s.client()
    first = s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    assert c.post(f"/api/runs/{first['id']}/apply").json()["status"] == "applied"

    bucket.put("products/p7/250g/hero-card/jar.jpg")
    records = [record(bucket.name, "products/p7/250g/hero-card/jar.jpg", "01"),
               record(bucket.name, "products/p55/100g/hero-card/gone.jpg", "02"),  # put and deleted since
               record(bucket.name, "README.txt", "03"), record(bucket.name, "products/p42/notes.txt", "04"),
               record("another-bucket", "products/p7/250g/hero-card/jar.jpg", "05")]
    r = c.post("/hooks/s3", json={"Records": records})
    assert r.status_code == 200 and r.json() == {
        "received": 5, "stored": 2, "duplicates": 0, "ignored": 3,
        "ignored_by_reason": {"other_bucket": 1, "unmatched": 1, "unsupported_extension": 1}}
    run = s.wait_run(s.wait_for(lambda: event_runs(s), what="an event run")[0]["id"])
    assert run["scope"] == ["p55", "p7"] and run["status"] == "planned", run
    assert run["summary"]["image"] == {"create": 1, "update": 0, "move": 0, "delete": 0}
    metrics = c.get("/metrics").text
    assert 'reconciler_events_ignored_total{reason="unmatched",via="webhook"} 1.0' in metrics


def test_a_burst_of_1000_events_is_one_run(serve, bucket, sql, database_url):
    """Events that wait together become one run, scoped to all their models.

    No replica leads while the burst arrives (the test holds the leader's lock): the
    events wait however long the burst takes on a busy machine, as they would within a
    debounce window. A later event's run proves that none was left behind for a second
    run — without sleeping through another window."""
    models = [f"M{i:03d}" for i in range(50)]
    bucket.put(*(f"{m}/P/x.jpg" for m in models))
    holder = psycopg2.connect(database_url)
    holder.autocommit = True
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LEADER_KEY,))
    try:
        s = serve(bucket.url, serve={"debounce": 3})
        c = s.client()
        assert c.get("/api/status").json()["leader"] is False
        for batch in range(20):  # 20 bodies of 50 records: 1,000 events, 50 models
            recs = [record(bucket.name, f"{m}/P/{batch}.jpg", f"{batch:04d}{i:04d}") for i, m in enumerate(models)]
            assert c.post("/hooks/s3", json={"Records": recs}).json()["stored"] == 50
    finally:
        holder.close()  # the server leads at its next try
    run = s.wait_run(s.wait_for(lambda: event_runs(s), what="the event run")[0]["id"])
    assert run["scope"] == models and run["change_count"] == 150
    assert sql("SELECT count(*) FROM reconciler_events WHERE run_id = %s", (run["id"],))[0][0] == 1000
    assert window(sql, run["id"]) >= 3
    bucket.put("Z/P/x.jpg")
    c.post("/hooks/s3", json={"Records": [record(bucket.name, "Z/P/x.jpg", "later")]})
    later = s.wait_for(lambda: len(event_runs(s)) == 2 and event_runs(s)[0], what="the later event's run")
    assert later["scope"] == ["Z"] and [r["id"] for r in event_runs(s)] == [later["id"], run["id"]]


def test_sqs_queue(serve, bucket, s3_env):
    sqs = boto3.client("sqs", endpoint_url=s3_env, region_name="us-east-1")
    url = sqs.create_queue(QueueName="reconciler-events")["QueueUrl"]
    bucket.put("Alice/a.jpg", "Bob/b.jpg")
    s = serve(bucket.url, serve={"sqs_queue_url": url, "debounce": 0.5})
    s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    bucket.put("Alice/c.jpg")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [record(bucket.name, "Alice/c.jpg", "10")]}))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    sqs.send_message(QueueUrl=url, MessageBody="not json at all")
    run = s.wait_run(s.wait_for(lambda: event_runs(s), timeout=40, what="an SQS event run")[0]["id"])
    assert run["scope"] == ["Alice"] and run["status"] == "planned"
    s.wait_for(lambda: int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"][
        "ApproximateNumberOfMessages"]) == 0 and int(sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["All"])["Attributes"]["ApproximateNumberOfMessagesNotVisible"]) == 0,
        what="the queue drained")
    assert 'reconciler_events_received_total{via="sqs"} 1.0' in s.client().get("/metrics").text


MALFORMED = [
    b"", b"null", b"[]", b"42", b'"x"', b"{", b"\xff\xfe", b'{"Records": {}}', b'{"Records": [1]}',
    b'{"Records": [{"s3": {"bucket": {"name": 1}, "object": {"key": "a"}}}]}',
    b'{"Records": [{"s3": {"bucket": {"name": "b"}, "object": {}}}]}',
    b'{"Records": [{"s3": []}]}', b"[" * 100_000, b'{"a":' * 50_000,
    b'{"Type": "Notification", "Message": "{"}',
]


def test_malformed_bodies_get_400_and_the_loop_goes_on(serve, bucket):
    bucket.put("Alice/a.jpg")
    s = serve(bucket.url, serve={"debounce": 0.3})
    c = s.client()
    for body in MALFORMED:
        r = c.post("/hooks/s3", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"], (body[:40], r.text)
    r = c.post("/hooks/s3", content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    # NUL and lone surrogates cannot be object keys: ignored, not a database error.
    odd = {"Records": [record(bucket.name, "Alice/a.jpg", "1"), record(bucket.name, "Alice/x.jpg", "2")]}
    odd["Records"][0]["s3"]["object"]["key"] = "Alice/%00.jpg"
    odd["Records"][1]["s3"]["object"]["key"] = "Alice/\ud800.jpg"
    odd["Records"][1]["s3"]["object"]["sequencer"] = "\u0000"
    r = c.post("/hooks/s3", content=json.dumps(odd).encode())
    assert r.status_code == 200, r.text

    @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(
        st.binary(max_size=300),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20).map(lambda v: json.dumps({"Records": [v]}).encode()),
        st.fixed_dictionaries({"s3": st.fixed_dictionaries({
            "bucket": st.fixed_dictionaries({"name": st.text(max_size=10)}),
            "object": st.fixed_dictionaries({"key": st.text(max_size=30), "sequencer": st.text(max_size=5)})})}
        ).map(lambda rec: json.dumps({"Records": [rec]}).encode()),
    ))
    def fuzz(body):
        r = c.post("/hooks/s3", content=body)
        assert r.status_code in (200, 400), (body, r.status_code, r.text)
        assert "error" in r.json() or "received" in r.json()

    fuzz()
    assert "Traceback" not in s.output() and "internal error" not in s.output()
    # The loop still turns a real event into a run.
    bucket.put("Alice/b.jpg")
    c.post("/hooks/s3", json={"Records": [record(bucket.name, "Alice/b.jpg", "99")]})
    run = s.wait_run(s.wait_for(lambda: event_runs(s), what="an event run")[-1]["id"])
    assert run["scope"] == ["Alice"]
