"""No secret ever leaves the process: not the database password, not the AWS secret
access key, not the plan-signing key — in plan files, stdout, stderr, error messages
(also with ``--debug``), or the audit log. Including when psycopg2 and boto3 raise:
a wrong password against a server that checks it, wrong S3 credentials against an
endpoint that checks them, an endpoint that cannot be reached.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import pytest

from reconciler.store.migrations import migrate
from reconciler.store.db import open_database

from .conftest import CDN, CREATORS, admin_exec, embedded_cluster, with_dbname

PASSWORD = "Pw-" + uuid.uuid4().hex[:8] + "!p@ss:w/rd%&?#"
SIGNING_KEY = "sign-" + uuid.uuid4().hex
OTHER_SIGNING_KEY = "other-" + uuid.uuid4().hex


def forms(secret: str) -> set[str]:
    """A secret as it may show up: as is, URL-encoded, JSON-escaped."""
    return {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1]}


class Leaks:
    """Collects every text the tool produced; ``check`` fails on any secret in one."""

    def __init__(self, *secrets: str) -> None:
        self.secrets = [s for s in secrets if s]
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> str:
        self.texts.append((where, text))
        return text

    def run(self, cli, *argv):
        r = cli(*argv)
        self.add(f"stdout of {argv[0]}", r.out)
        self.add(f"stderr of {argv[0]}", r.err)
        return r

    def files(self, folder) -> None:
        for path, _, names in os.walk(folder):
            for name in names:
                full = os.path.join(path, name)
                if os.path.isfile(full) and not os.path.islink(full):
                    with open(full, "rb") as f:
                        self.add(full, f.read().decode("utf-8", "replace"))

    def check(self) -> None:
        assert self.texts
        for secret in self.secrets:
            for form in forms(secret):
                for where, text in self.texts:
                    assert form not in text, f"a secret ({form[:4]}…) shows in {where}"


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def folder_bucket(tmp_path):
    b = tmp_path / "bucket"
    for key in ("M/a.jpg", "M/P/1.jpg", "M/P/2.mp4", "N/Q/x.png"):
        (b / key).parent.mkdir(parents=True, exist_ok=True)
        (b / key).write_bytes(b"abc")
    return b


# --------------------------------------------------------------------------- database


@pytest.fixture
def secret_role(pg_admin_url, database_url, sql):
    """A login role with a password and DML rights on the test database; its URL."""
    role = "rt_secret_" + uuid.uuid4().hex[:8]
    dbname = urlsplit(database_url).path.lstrip("/")
    admin_exec(pg_admin_url, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    sql(f'GRANT CONNECT, TEMPORARY ON DATABASE "{dbname}" TO {role}')
    sql(f"GRANT USAGE ON SCHEMA public TO {role}")
    sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    sql(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    yield role, with_user(database_url, role, PASSWORD)
    sql(f"DROP OWNED BY {role}")
    admin_exec(pg_admin_url, f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="module")
def password_checked():
    """A database on a PostgreSQL cluster of this module's own, which checks passwords
    (the shared test server trusts local connections, and its pg_hba.conf is never
    touched: a run killed midway leaves nothing changed behind). A role with a password
    owns the database, initialised; (role, its URL)."""
    role, dbname = "rt_secret_" + uuid.uuid4().hex[:8], "secrets"
    with embedded_cluster("reconciler-test-hba-") as server:
        admin = server.get_uri("postgres")
        admin_exec(admin, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        admin_exec(admin, f'CREATE DATABASE "{dbname}" OWNER {role}')
        conn = psycopg2.connect(admin)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW hba_file")
                with open(cur.fetchone()[0], "w") as f:  # the superuser alone is trusted
                    f.write("local all postgres trust\n" + "".join(
                        f"{kind} all all {addr} scram-sha-256\n"
                        for kind, addr in (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128"))))
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()
        url = with_user(with_dbname(admin, dbname), role, PASSWORD)
        _wait_until_passwords_are_checked(with_user(url, role, "not-the-password"))
        with open_database(url) as db:
            migrate(db, CREATORS)
        yield role, url


def _wait_until_passwords_are_checked(wrong_url: str, timeout: float = 30) -> None:
    """pg_reload_conf() only signals the server: wait until it refuses a wrong password."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(wrong_url).close()
        except psycopg2.OperationalError as e:
            if "password authentication failed" in str(e):
                return
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not start checking passwords within {timeout:g}s")
        time.sleep(0.02)


def test_database_password_never_shows(cli, secret_role, sql, tmp_path, monkeypatch):
    role, url = secret_role
    bucket = folder_bucket(tmp_path)
    leaks = Leaks(PASSWORD)
    common = ["--database", url, "--cdn-base-url", CDN]
    r = leaks.run(cli, "plan", "--source", bucket, "-o", "p.json", *common)
    assert r.code == 0, r.err
    for fmt in ("table", "markdown", "json"):
        assert leaks.run(cli, "show", "p.json", "--format", fmt).code == 0
    assert leaks.run(cli, "validate", "p.json").code == 0
    r = leaks.run(cli, "apply", "p.json", *common)
    assert r.code == 0, r.err
    assert sql("SELECT db_user FROM reconciler_applies")[0][0] == role  # it really was this role
    r = leaks.run(cli, "apply", "p.json", *common, "--debug")  # an error, with a traceback
    assert r.code == 1 and "already applied" in r.err
    for fmt in ("table", "json"):
        assert leaks.run(cli, "history", "--format", fmt, *common).code == 0
    assert leaks.run(cli, "rollback", "1", "-o", "rb.json", *common).code == 0
    # the same through DATABASE_URL and a config file
    monkeypatch.setenv("DATABASE_URL", url)
    r = leaks.run(cli, "plan", "--source", bucket, "-o", "p2.json", "--cdn-base-url", CDN)
    assert r.code == 0, r.err
    monkeypatch.delenv("DATABASE_URL")
    (tmp_path / "cfg.yaml").write_text(json.dumps({"database": {"url": url}, "cdn_base_url": CDN}))
    r = leaks.run(cli, "plan", "--source", bucket, "-o", "p3.json", "--config", "cfg.yaml")
    assert r.code == 0, r.err
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["target"]["database"].startswith(f"postgresql://{role}@")
    leaks.files(tmp_path / "p.json")
    leaks.files(tmp_path / "p2.json")
    leaks.files(tmp_path / "p3.json")
    leaks.files(tmp_path / "rb.json")
    for table in ("reconciler_applies", "reconciler_changes"):
        leaks.add(table, json.dumps(sql(f"SELECT row_to_json(t)::text FROM {table} t"), default=str))
    leaks.check()


def test_wrong_password_against_a_checking_server(cli, password_checked, tmp_path, monkeypatch):
    role, url = password_checked
    bucket = folder_bucket(tmp_path)
    wrong_password = "Wrong-" + uuid.uuid4().hex[:8] + "%zz@x"
    wrong = with_user(url, role, wrong_password)
    leaks = Leaks(PASSWORD, wrong_password)
    for debug in ([], ["--debug"]):
        for command in (["init"], ["history"], ["plan", "--source", bucket, "-o", "p.json", "--cdn-base-url", CDN]):
            r = leaks.run(cli, *command, "--database", wrong, *debug)
            assert r.code == 1
            assert "password authentication failed" in r.err
            assert f"postgresql://{role}@" in r.err  # the URL, without its password
            if not debug:
                assert r.err.startswith("error: cannot connect to ") and r.err.count("\n") == 1
        monkeypatch.setenv("DATABASE_URL", wrong)
        r = leaks.run(cli, "history", *debug)
        assert r.code == 1 and "password authentication failed" in r.err
        monkeypatch.delenv("DATABASE_URL")
    assert not (tmp_path / "p.json").exists()
    # The right password gets in: the failures above were about the password.
    r = leaks.run(cli, "history", "--database", url)
    assert r.code == 0, r.err
    leaks.check()


@pytest.mark.parametrize(
    "url, password",
    [
        ("postgresql://app:50%off@127.0.0.1:1/prod", "50%off"),  # not percent-encoded: libpq echoes it
        ("postgresql://app:s3cr3t-pw@127.0.0.1:notaport/prod", "s3cr3t-pw"),
        ("postgresql://app:s3cr3t-pw@127.0.0.1:1/prod?sslmode=bogus", "s3cr3t-pw"),
        ("postgresql://app@127.0.0.1:1/prod?password=qu3ry-pw%zz", "qu3ry-pw%zz"),
        ("postgresql://app:p%40ss%2Fw0rd@127.0.0.1:1/prod", "p@ss/w0rd"),
    ],
)
def test_malformed_or_unreachable_database_url_hides_the_password(cli, tmp_path, monkeypatch, url, password):
    leaks = Leaks(password)
    for debug in ([], ["--debug"]):
        r = leaks.run(cli, "init", "--database", url, *debug)
        assert r.code == 1 and "error: " in r.err
        monkeypatch.setenv("DATABASE_URL", url)
        r = leaks.run(cli, "history", *debug)
        assert r.code == 1 and "error: " in r.err
        monkeypatch.delenv("DATABASE_URL")
        (tmp_path / "cfg.yaml").write_text(json.dumps({"database": {"url": url}}))
        r = leaks.run(cli, "history", "--config", "cfg.yaml", *debug)
        assert r.code == 1 and "error: " in r.err
    leaks.check()


# --------------------------------------------------------------------------- S3


def _moto_auth(endpoint: str, count: str) -> None:
    """moto's own switch: authenticate requests after ``count`` of them ("inf": never)."""
    request = urllib.request.Request(
        endpoint + "/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def checking_s3(s3_env, bucket):
    """The moto server checking credentials; a user allowed to list, and its key."""
    import boto3

    iam = boto3.client("iam", endpoint_url=s3_env)
    user = "lister-" + uuid.uuid4().hex[:8]
    iam.create_user(UserName=user)
    # Listing only, never object bodies. AWS authorises ListObjectsV2 as s3:ListBucket;
    # moto's server (5.2.x) checks the operation's own name, s3:ListObjectsV2. Granting
    # both keeps the user list-only on either, and the test about the credentials.
    iam.put_user_policy(UserName=user, PolicyName="list", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListObjectsV2"], "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    bucket.put("M/P/1.jpg", "M/a.jpg")
    _moto_auth(s3_env, "0")
    try:
        yield bucket, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        _moto_auth(s3_env, "inf")


def test_aws_secret_never_shows(cli, database_url, bucket, tmp_path):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    bucket.put("M/P/1.jpg", "M/a.jpg")
    leaks = Leaks(secret)
    common = ["--database", database_url, "--cdn-base-url", CDN]
    r = leaks.run(cli, "plan", "--source", bucket.url, "-o", "p.json", *common, "--debug")
    assert r.code == 0, r.err
    assert leaks.run(cli, "show", "p.json", "--format", "json").code == 0
    assert leaks.run(cli, "apply", "p.json", *common).code == 0
    r = leaks.run(cli, "plan", "--source", "s3://no-such-bucket-anywhere", *common, "--debug")
    assert r.code == 1 and "NoSuchBucket" in r.err
    leaks.files(tmp_path)
    leaks.check()


def test_wrong_s3_credentials(cli, database_url, checking_s3, tmp_path, monkeypatch):
    bucket, access_key, right_secret = checking_s3
    wrong_secret = "wrong+" + uuid.uuid4().hex + "/x"
    leaks = Leaks(right_secret, wrong_secret)
    common = ["--source", bucket.url, "--database", database_url, "--cdn-base-url", CDN]
    for key_id, expected in (("AKIAUNKNOWN000000000", "InvalidAccessKeyId"), (access_key, "SignatureDoesNotMatch")):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
        for debug in ([], ["--debug"]):
            r = leaks.run(cli, "plan", "-o", "p.json", *common, *debug)
            assert r.code == 1
            assert f"cannot list s3://{bucket.name}/: {expected}" in r.err
            if not debug:
                assert r.err.startswith("error: ") and r.err.count("\n") == 1
    assert not (tmp_path / "p.json").exists()
    # The right secret lists the bucket: the failures above were about the credentials.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", right_secret)
    r = leaks.run(cli, "plan", "-o", "p.json", *common)
    assert r.code == 0, r.err
    leaks.files(tmp_path)
    leaks.check()


def test_unreachable_s3_endpoint(cli, database_url, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    leaks = Leaks(os.environ["AWS_SECRET_ACCESS_KEY"])
    for debug in ([], ["--debug"]):
        r = leaks.run(cli, "plan", "--source", "s3://some-bucket/media", "--database", database_url,
                      "--cdn-base-url", CDN, *debug)
        assert r.code == 1
        assert "cannot list s3://some-bucket/media/" in r.err and "cannot reach the S3 endpoint" in r.err
        if not debug:
            assert r.err.startswith("error: ") and r.err.count("\n") == 1
    assert os.listdir(tmp_path) == []
    leaks.check()


# --------------------------------------------------------------------------- signing key


def test_signing_key_never_shows(cli, database_url, tmp_path, monkeypatch):
    bucket = folder_bucket(tmp_path)
    common = ["--database", database_url, "--cdn-base-url", CDN]
    leaks = Leaks(SIGNING_KEY, OTHER_SIGNING_KEY)
    monkeypatch.setenv("RECONCILER_SIGNING_KEY", SIGNING_KEY)
    r = leaks.run(cli, "plan", "--source", bucket, "-o", "p.json", "--sign", *common)
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "p.json").read_text())["signature"].startswith("hmac-sha256:")
    assert leaks.run(cli, "validate", "p.json", "--require-signature").code == 0
    monkeypatch.setenv("RECONCILER_SIGNING_KEY", OTHER_SIGNING_KEY)
    for debug in ([], ["--debug"]):
        r = leaks.run(cli, "validate", "p.json", "--require-signature", *debug)
        assert r.code == 1 and "signature does not match" in r.err
        r = leaks.run(cli, "apply", "p.json", "--require-signature", *common, *debug)
        assert r.code == 1 and "signature does not match" in r.err
    monkeypatch.delenv("RECONCILER_SIGNING_KEY")
    r = leaks.run(cli, "validate", "p.json", "--require-signature")
    assert r.code == 1 and "RECONCILER_SIGNING_KEY" in r.err
    leaks.files(tmp_path)
    leaks.check()


# --------------------------------------------------------------------------- scrubbing


@pytest.mark.parametrize(
    "text, secret",
    [
        ("the plan deletes 2 row(s); the plan's signature does not match", "s"),
        ("the plan deletes 2 row(s); check the source", "row"),
        ("Is the server running on that host and accepting TCP/IP connections?", "on"),
        ("signed with another key", "other"),
        ("a word with the secret inside: Xk9#Zz9q", "k9#Z"),
    ],
)
def test_a_short_secret_does_not_mangle_words(text, secret):
    from reconciler.store.db import scrub

    assert scrub(text, secret) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("connecting to postgresql://app:pw1@db/prod failed", "connecting to postgresql://app:***@db/prod failed"),
        ("dsn: host=db password=pw1 user=app", "dsn: host=db password=*** user=app"),
        ("?sslmode=require&password=pw1&x=1", "?sslmode=require&password=***&x=1"),
        ("Password: 'pw1' rejected", "Password: '***' rejected"),
        ('invalid percent-encoded token: "pw1"', 'invalid percent-encoded token: "***"'),
        ("the key 'pw1' was refused", "the key '***' was refused"),
    ],
)
def test_a_short_secret_is_scrubbed_where_it_stands(text, expected):
    from reconciler.store.db import scrub

    assert scrub(text, "pw1") == expected


def test_a_long_secret_is_scrubbed_everywhere():
    from reconciler.store.db import scrub

    secret = "Long-Secret-42"
    assert scrub(f"x{secret}y and ({secret}) and {secret}'s", secret) == "x***y and (***) and ***'s"


def test_a_short_database_password_leaves_the_message_readable(cli, tmp_path):
    r = cli("history", "--database", "postgresql://app:on@127.0.0.1:1/prod")
    assert r.code == 1
    assert r.err.startswith("error: cannot connect to postgresql://app@127.0.0.1:1/prod: ")
    assert "***" not in r.err and ":on@" not in r.err
