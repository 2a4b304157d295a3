"""The request guard (``reconciler/server/guard.py``): a request for another host, one
that comes from another site, and an API body that is not JSON are refused before
anything else sees them — the rules as pure functions, then against the real server
(the browser's view of the same is in ``test_browser.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from reconciler.controller.options import load_serve_options
from reconciler.errors import ConfigError
from reconciler.server.guard import Site, split_host

from .conftest import folder_bucket
from .serving import serve  # noqa: F401 — the fixture
from .test_dashboard import KEYS, csrf_of, first_planned, seed_gone

EVIL = "http://evil.example"

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)
ports = st.none() | st.integers(1, 65535)


def host(name: str, port: int | None) -> str:
    return name if port is None else f"{name}:{port}"


# --------------------------------------------------------------------------- the rules


def test_split_host():
    assert split_host("LocalHost:8080") == ("localhost", 8080)
    assert split_host("[::1]:80") == ("::1", 80) and split_host("[0:0::1]") == ("::1", None)
    for bad in ("", "[::1", "[nonsense]:1", "a:b", "a:123456", "user@host", "a/b", "[::1]x"):
        assert split_host(bad) is None, bad


@given(names, ports)
def test_a_loopback_server_answers_for_loopback_names_alone(name, port):
    site = Site.of("127.0.0.1")
    assert site.answers_for(host("localhost", port)) and site.answers_for(host("127.0.0.1", port))
    assert site.answers_for(host("[::1]", port)) and site.answers_for(host("127.3.2.1", port))
    # A name that rebinds to 127.0.0.1 is still another name.
    assert site.answers_for(host(name, port)) == (name == "localhost")
    assert not site.answers_for(host(f"localhost.{name}", port)) and not site.answers_for(host("10.0.0.1", port))


@given(names, ports)
def test_allowed_hosts_and_the_public_url(name, port):
    site = Site.of("0.0.0.0", ["reconciler.internal", ".corp.example", "[fd00::5]"], "https://ops.example.com")
    for ok in ("reconciler.internal", "Reconciler.Internal", "corp.example", f"{name}.corp.example",
               "ops.example.com", "[fd00::5]", "10.1.2.3", "[fd00::7]"):  # listening everywhere: any address
        assert site.answers_for(host(ok, port)), ok
    assert site.answers_for(host(name, port)) == (name in ("reconciler.internal", "corp.example", "ops.example.com",
                                                           "localhost") or name.endswith(".corp.example"))
    assert not site.answers_for(host(f"{name}corp.example", port))
    assert Site.of("127.0.0.1", ["*"]).answers_for(host(name, port))


@given(st.sampled_from(["http", "https"]), names, ports, ports)
def test_same_origin_is_scheme_host_and_port(scheme, name, port, other):
    site = Site.of("0.0.0.0", public_url="https://ops.example.com")
    origin = f"{scheme}://{host(name, port)}"
    assert site.same_origin(origin, host(name, port), scheme)
    assert site.same_origin(origin, host(name, other), scheme) == (
        (port or (80 if scheme == "http" else 443)) == (other or (80 if scheme == "http" else 443)))
    assert not site.same_origin(origin, host(name, port), "https" if scheme == "http" else "http")
    assert not site.same_origin(origin, host(name + "x", port), scheme)
    assert site.same_origin("https://ops.example.com", host(name, port), "http")  # the public URL, behind its proxy
    assert not site.same_origin("null", host(name, port), scheme)


def test_serve_options_are_checked(tmp_path):
    def options(serve):
        path = tmp_path / "c.yaml"
        path.write_text(__import__("yaml").safe_dump({"serve": serve}))
        return load_serve_options(str(path), {})

    o = options({"public_url": "HTTPS://Ops.Example.com:443/", "trusted_proxies": ["10.0.0.0/8", "::1"],
                 "allowed_hosts": ["a.example"], "public_metrics": True})
    assert o.public_url == "https://ops.example.com" and o.trusted_proxies == ["10.0.0.0/8", "::1"]
    assert options({"public_url": "http://[::1]:8080"}).public_url == "http://[::1]:8080"
    for bad in ("ops.example.com", "https://ops.example.com/reconciler", "ftp://x", "https://x:99999",
                "https://user:pw@x"):
        with pytest.raises(ConfigError, match="serve.public_url"):
            options({"public_url": bad})
    with pytest.raises(ConfigError, match="serve.trusted_proxies: 'proxy' is not an IP address"):
        options({"trusted_proxies": ["proxy"]})
    with pytest.raises(ConfigError, match="allowed_hosts"):
        options({"allowed_hosts": "a.example"})


# --------------------------------------------------------------------------- the server


def snapshot(sql) -> tuple:
    """What a refused request must not change."""
    return (sql("SELECT id, status, decided_by FROM reconciler_runs ORDER BY id"),
            sql("SELECT count(*) FROM reconciler_applies"), sql("SELECT count(*) FROM reconciler_events"),
            sql("SELECT folder_name FROM whitelabel_models ORDER BY 1"))


@pytest.mark.slow
def test_a_forged_host_is_refused(serve, tmp_path, sql):
    seed_gone(sql)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    c = s.client()
    run = first_planned(s)
    before = snapshot(sql)
    port = s.url.rsplit(":", 1)[1]
    # The verified attack: a foreign Host, a cross-site Origin, a text/plain body.
    r = c.post(f"/api/runs/{run['id']}/apply", content=b"{}",
               headers={"Host": "evil.example", "Origin": EVIL, "Content-Type": "text/plain"})
    assert r.status_code == 421 and "does not answer for the host 'evil.example'" in r.json()["error"]
    for name in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", f"localhost.evil.example:{port}"):
        for method, path in (("GET", "/api/status"), ("POST", "/api/runs"), ("POST", f"/api/runs/{run['id']}/apply"),
                             ("GET", "/metrics"), ("POST", "/hooks/s3")):
            r = c.request(method, path, headers={"Host": name})
            assert r.status_code == 421 and "serve.allowed_hosts" in r.json()["error"], (name, path, r.text)
        page = c.get("/", headers={"Host": name})
        assert page.status_code == 421 and "Wrong address" in page.text and "text/html" in page.headers["content-type"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
    assert snapshot(sql) == before
    for name in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert c.get("/api/status", headers={"Host": name}).status_code == 200, name


@pytest.mark.slow
def test_names_behind_a_proxy(serve, tmp_path):
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS),
              serve={"allowed_hosts": ["reconciler.internal", ".corp.example"], "public_url": "https://ops.example.com"})
    c = s.client()
    for name in ("reconciler.internal:8080", "eu.corp.example", "ops.example.com"):
        assert c.get("/api/status", headers={"Host": name}).status_code == 200, name
    assert c.get("/api/status", headers={"Host": "other.example"}).status_code == 421
    # Browsers behind the proxy send the public origin; the proxy may pass its own Host.
    r = c.post("/api/runs", headers={"Host": "127.0.0.1:8080", "Origin": "https://ops.example.com"})
    assert r.status_code == 202, r.text
    r = c.post("/api/runs", headers={"Host": "ops.example.com", "Origin": "https://ops.example.com.evil.example"})
    assert r.status_code == 403


@pytest.mark.slow
def test_cross_site_and_non_json_requests_are_refused(serve, tmp_path, sql):
    seed_gone(sql)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    c = s.client()
    run = first_planned(s)
    before = snapshot(sql)
    apply = f"/api/runs/{run['id']}/apply"
    # Another site, another origin (another port of the same host is the same *site*), a sandboxed frame.
    for headers in ({"Origin": EVIL}, {"Origin": "http://127.0.0.1:9"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": s.url, "Sec-Fetch-Site": "same-site"}):
        for path in (apply, f"/api/runs/{run['id']}/discard", "/api/runs", "/api/applies/1/rollback", "/hooks/s3"):
            r = c.post(path, json={}, headers=headers)
            assert r.status_code == 403 and r.json()["error"].startswith("refused: "), (headers, path, r.text)
    # The API takes JSON, or no body: not what a form or a simple fetch can send.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "application/jsonx", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = c.post("/api/runs", content=b'{"models": ["Alice"]}', headers=headers)
        assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"], content_type
    assert snapshot(sql) == before
    # The webhook keeps its own rules: SNS posts text/plain.
    assert c.post("/hooks/s3", content=b'{"Records": []}', headers={"Content-Type": "text/plain"}).status_code == 200
    # Same origin (a browser's own page), and clients that send no Origin, pass.
    r = c.post("/api/runs", content=b'{"models": ["Alice"]}',
               headers={"Content-Type": "application/json; charset=utf-8", "Origin": s.url,
                        "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 202, r.text
    assert c.post(apply, headers={"Origin": s.url}).json()["status"] == "applied"


@pytest.mark.slow
def test_pages_refuse_cross_site_forms_even_with_the_csrf_token(serve, tmp_path, sql):
    seed_gone(sql)
    s = serve(folder_bucket(tmp_path / "bucket", *KEYS))
    run = first_planned(s)
    browser = s.client(None)
    assert browser.get(f"/login?token={s.token}").status_code == 303
    token = csrf_of(browser.get(f"/runs/{run['id']}").text)
    before = snapshot(sql)
    for headers in ({"Origin": "http://127.0.0.1:9"}, {"Sec-Fetch-Site": "same-site"}):
        for path in (f"/runs/{run['id']}/apply", f"/runs/{run['id']}/discard", "/runs", "/logout"):
            r = browser.post(path, data={"csrf": token}, headers=headers)
            assert r.status_code == 403 and "Refused" in r.text and "another" in r.text, (path, r.text)
    assert snapshot(sql) == before
    r = browser.post(f"/runs/{run['id']}/apply", data={"csrf": token},
                     headers={"Origin": s.url, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 303 and s.wait_run(run["id"])["status"] == "applied"


def test_guard_error_pages_need_no_session():
    from reconciler.server.pages import error_page

    r = error_page(421, "no <b>such</b> host")
    assert r.status_code == 421 and b"no &lt;b&gt;such&lt;/b&gt; host" in r.body and b"Log in" in r.body

    assert not Site.of("127.0.0.1").answers_for(None)  # no Host at all
