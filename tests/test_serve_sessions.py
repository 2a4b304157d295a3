"""Who may talk to ``reconciler serve``: the token a loopback-only server makes for
itself, dashboard sessions (logged out on every replica at once, ended by a token's
rotation), the session cookie's ``Secure`` flag behind a proxy, and the metrics token
— against the real server and a real PostgreSQL."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import time

import pytest

from reconciler.server.sessions import COOKIE

from .conftest import folder_bucket
from .serving import serve, write_config  # noqa: F401 — the fixture
from .test_dashboard import KEYS, csrf_of

pytestmark = pytest.mark.slow

ALICE = "alice-token-0123456789abcdef"
TOKENS = {"RECONCILER_API_TOKENS": f"alice:{ALICE}"}


def log_in(s, token: str = ALICE, **headers):
    """A browser-like client logged in through the login form; returns it and the answer.
    (The form's cookie is sent back by hand: marked ``Secure``, httpx would keep it to
    itself over plain HTTP, while the proxy in front of the server speaks HTTPS.)"""
    c = s.client(None)
    form = c.get("/login", headers=headers)
    cookie = {"Cookie": f"{COOKIE}={form.cookies[COOKIE]}"}
    r = c.post("/login", data={"token": token, "csrf": csrf_of(form.text)}, headers={**headers, **cookie})
    assert r.status_code == 303, r.text
    return c, r


def test_a_loopback_server_makes_its_own_token(serve, tmp_path):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    port = s.url.rsplit(":", 1)[1]
    path = tmp_path / "state" / f"serve-{port}.token"
    assert f"listening on {s.url} (loopback only, no RECONCILER_API_TOKENS: this process's token is in " \
           f"state/serve-{port}.token)" in s.output()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_text().strip() == s.token
    assert s.token not in s.output()  # the link with the token is printed on a terminal only
    anon = s.client(None)
    assert anon.get("/api/status").status_code == 401 and anon.post("/api/runs").status_code == 401
    assert s.client().get("/api/status").status_code == 200
    # The link logs in; another token does not; a configured token's form is the only other way.
    assert anon.get("/login", params={"token": "x" * 43}).status_code == 401
    r = anon.get("/login", params={"token": s.token})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "Signed in as <strong>local</strong>" in anon.get("/").text
    # Events are hints, and a local MinIO cannot know a token made at each start.
    assert s.client(None).post("/hooks/s3", json={"Records": []}).status_code == 200
    assert s.stop() == 0
    assert not path.exists()


def read_terminal(terminal, until, seconds: float = 30) -> bytes:
    """What a program writes to a terminal, until ``until(seen)`` or its end."""
    seen, deadline = b"", time.monotonic() + seconds
    while not until(seen):
        ready, _, _ = select.select([terminal], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"timed out reading the terminal:\n{seen.decode(errors='replace')}"
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: every writer is gone
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_on_a_terminal_the_login_link_is_printed(tmp_path, database_url):
    """The link with the token goes to the person at the terminal (as Jupyter prints
    one), never to a log: with stderr a file, the tests above see no token. The
    SIGTERM sent as soon as the link shows comes before uvicorn has its own handlers:
    the server still stops cleanly (exit 0, the token file removed)."""
    config = write_config(tmp_path / "c.yaml", str(folder_bucket(tmp_path / "bucket", *KEYS)))
    env = {k: v for k, v in os.environ.items() if k not in ("RECONCILER_API_TOKENS", "RECONCILER_CONFIG")}
    terminal, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "--config", str(config), "serve", "--listen",
                             "127.0.0.1:0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                            env={**env, "DATABASE_URL": database_url}, cwd=tmp_path)
    os.close(follower)
    try:
        seen = read_terminal(terminal, lambda seen: re.search(rb"log in: \S+\r?\n", seen))  # a tty ends lines with \r\n
    finally:
        proc.send_signal(signal.SIGTERM)
        read_terminal(terminal, lambda seen: False)  # the terminal stays open while the server stops
        proc.wait(30)
        os.close(terminal)
    m = re.search(rb"log in: (http://127\.0\.0\.1:(\d+))/login\?token=(\S+)", seen)
    assert m, seen.decode(errors="replace")
    assert proc.returncode == 0
    assert not (tmp_path / "state" / f"serve-{m.group(2).decode()}.token").exists()  # removed at exit
    assert len(m.group(3)) >= 40


def test_the_login_link_is_for_the_made_token_only(serve, tmp_path):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS), env=TOKENS, token=ALICE)
    c = s.client(None)
    r = c.get("/login", params={"token": ALICE})  # a configured token does not go into a URL
    assert r.status_code == 200 and 'type="password"' in r.text and "Paste one of the API tokens" in r.text
    assert c.get("/").status_code == 303  # still not logged in
    assert not list(tmp_path.glob("state/serve-*.token"))


def test_logout_ends_the_session_on_every_replica(serve, tmp_path, sql):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    a = serve(src, env=TOKENS, token=ALICE)
    b = serve(src, env=TOKENS, token=ALICE)
    browser, _ = log_in(a)
    stolen = b.client(None)
    stolen.cookies.set(COOKIE, browser.cookies[COOKIE])
    assert stolen.get("/").status_code == 200  # the same tokens: any replica takes the cookie
    assert sql("SELECT user_name, length(sid_hash) FROM reconciler_sessions") == [("alice", 32)]  # a hash

    home = browser.get("/")
    assert browser.post("/logout", data={"csrf": csrf_of(home.text)}).status_code == 303
    assert sql("SELECT count(*) FROM reconciler_sessions")[0][0] == 0
    r = stolen.get("/")  # the copied cookie is worth nothing now, on the other replica too
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert browser.get("/").status_code == 303


def test_rotating_a_token_ends_its_sessions(serve, tmp_path):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    old = serve(src, env=TOKENS, token=ALICE)
    browser, _ = log_in(old)
    cookie = browser.cookies[COOKIE]
    old.stop()
    rotated = "alice-rotated-0123456789abcdef"
    new = serve(src, env={"RECONCILER_API_TOKENS": f"alice:{rotated}"}, token=rotated)
    c = new.client(None)
    c.cookies.set(COOKIE, cookie)
    assert c.get("/").status_code == 303


@pytest.mark.parametrize("serve_config, headers, secure", [
    ({}, {}, False),
    ({}, {"X-Forwarded-Proto": "https"}, False),  # a forwarded header from anyone is not believed
    ({"trusted_proxies": ["127.0.0.1"]}, {"X-Forwarded-Proto": "https"}, True),
    ({"trusted_proxies": ["10.0.0.0/8"]}, {"X-Forwarded-Proto": "https"}, False),  # not from that proxy
    ({"public_url": "https://ops.example.com"}, {}, True),
], ids=["plain", "forged-forwarded", "trusted-proxy", "untrusted-proxy", "public-url"])
def test_the_session_cookie_is_secure_behind_a_tls_proxy(serve, tmp_path, serve_config, headers, secure):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS), env=TOKENS, token=ALICE, serve=serve_config)
    _, r = log_in(s, **headers)
    cookie = r.headers["set-cookie"]
    assert ("; secure" in cookie.lower()) == secure, cookie


def test_metrics_can_be_public_on_purpose(serve, tmp_path):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS), env=TOKENS, token=ALICE, serve={"public_metrics": True})
    assert s.client(None).get("/metrics").status_code == 200
    assert s.client(None).get("/api/status").status_code == 401
    settings = s.client().get("/settings").text
    assert "public_metrics" in settings and "RECONCILER_METRICS_TOKEN" in settings
