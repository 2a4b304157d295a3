"""Configuration: flag > environment > config file > default, and config file errors."""

from __future__ import annotations

import os
import tempfile

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from reconciler.catalogue import load_catalogue, read_key
from reconciler.catalogue.spec import shipped_spec
from reconciler.config import Settings, check_url, load_settings
from reconciler.errors import ConfigError

from .conftest import CREATORS, PRODUCTS

FULL_CONFIG = """\
# every key the config file knows
source:
  url: s3://media/catalogue
  endpoint_url: https://nyc3.digitaloceanspaces.com
  region: nyc3
  addressing_style: path
  max_workers: 4
database:
  url: postgresql://app@db/prod
  state_dir: /var/lib/reconciler
cdn_base_url: https://cdn.example.com
catalogue: creators
layout:
  images: [jpg, PNG]
  videos: [mp4]
  profile_folder: _meta
  icon_names: [Logo]
  banner_names: [header]
safety:
  allow_empty_source: true
  max_delete: 100
  max_delete_percent: 12.5
  max_url_rewrite_percent: 100
  require_signature: true
apply:
  lock_timeout: 5
plan:
  detect_moves: false
  batch_rows: 5000
plans_dir: ops/plans
"""


@pytest.fixture
def config(tmp_path):
    """Write a config file; returns its path."""
    def write(text: str | bytes, name: str = "reconciler.yaml") -> str:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return str(path)
    return write


# --------------------------------------------------------------------------- values and precedence


def test_defaults_without_flags_environment_or_file():
    assert load_settings({}, {}, None) == Settings()
    s = load_settings({}, {}, None)
    assert (s.source, s.database, s.cdn_base_url, s.state_dir, s.plans_dir) == (None, None, None, "state", "plans")
    assert (s.max_workers, s.lock_timeout, s.allow_empty_source, s.require_signature) == (8, 60.0, False, False)
    assert s.catalogue == CREATORS


def test_every_config_file_key(config):
    s = load_settings({}, {}, config(FULL_CONFIG))
    assert s.source == "s3://media/catalogue"
    assert s.endpoint_url == "https://nyc3.digitaloceanspaces.com"
    assert (s.region, s.addressing_style, s.max_workers) == ("nyc3", "path", 4)
    assert (s.database, s.state_dir) == ("postgresql://app@db/prod", "/var/lib/reconciler")
    assert s.cdn_base_url == "https://cdn.example.com"
    # layout: adjusts the creators catalogue: its classes and its profile rules.
    assert s.catalogue == load_catalogue("creators", None, {
        "images": ["jpg", "PNG"], "videos": ["mp4"], "profile_folder": "_meta", "icon_names": ["Logo"],
        "banner_names": ["header"]})
    assert (s.catalogue.classes["image"], s.catalogue.classes["video"]) == ({"jpg", "png"}, {"mp4"})
    assert read_key(s.catalogue, "Alice/_meta/logo.png").rule.name == "profile-icon"
    assert read_key(s.catalogue, "Alice/_meta/header.jpg").rule.name == "profile-banner"
    assert (s.allow_empty_source, s.max_delete, s.max_delete_percent, s.require_signature) == (True, 100, 12.5, True)
    assert s.max_url_rewrite_percent == 100
    assert s.lock_timeout == 5.0 and s.plans_dir == "ops/plans"
    assert s.detect_moves is False
    # --no-moves on the command line turns moves off over a config that has them on.
    assert load_settings({"detect_moves": False}, {}, None).detect_moves is False
    assert Settings().detect_moves is True
    assert s.batch_rows == 5000 and Settings().batch_rows == 100_000


@pytest.mark.parametrize(
    "name, env_name, file_text, file_value, default, given",
    [
        ("source", "RECONCILER_SOURCE", "source: {url: s3://file}", "s3://file", None, "from-{}"),
        ("database", "DATABASE_URL", "database: {url: postgresql://file/db}", "postgresql://file/db", None, "from-{}"),
        ("cdn_base_url", "RECONCILER_CDN_BASE_URL", "cdn_base_url: https://file.example", "https://file.example", None,
         "https://{}.example"),
        ("state_dir", "RECONCILER_STATE_DIR", "database: {state_dir: file-state}", "file-state", "state", "from-{}"),
    ],
)
def test_precedence_flag_then_environment_then_file_then_default(config, name, env_name, file_text, file_value,
                                                                  default, given):
    path = config(file_text)
    flag, env_value = given.format("flag"), given.format("env")
    flags = {name: flag}
    env = {env_name: env_value}
    assert getattr(load_settings(flags, env, path), name) == flag
    assert getattr(load_settings({}, env, path), name) == env_value
    assert getattr(load_settings({}, {}, path), name) == file_value
    assert getattr(load_settings({}, {}, None), name) == default
    assert getattr(load_settings(flags, {}, None), name) == flag


def test_the_catalogue_flag_then_environment_then_file_then_creators(config, tmp_path, monkeypatch):
    path = config("catalogue: product-images\n")
    assert load_settings({}, {}, None).catalogue == CREATORS
    assert load_settings({}, {}, path).catalogue == PRODUCTS
    assert load_settings({}, {"RECONCILER_CATALOGUE": "creators"}, path).catalogue == CREATORS
    flag = {"catalogue": "product-images"}
    assert load_settings(flag, {"RECONCILER_CATALOGUE": "creators"}, path).catalogue == PRODUCTS
    # A spec file is found next to the config file, wherever the tool runs.
    (tmp_path / "specs").mkdir()
    spec = yaml.safe_dump(shipped_spec("product-images"), sort_keys=False)  # its order is part of its meaning
    (tmp_path / "specs" / "shop.yaml").write_text(spec, "utf-8")
    monkeypatch.chdir(tmp_path / "specs")
    assert load_settings({}, {}, config("catalogue: specs/shop.yaml\n")).catalogue == PRODUCTS
    # One typed in the shell (a flag, a variable) is found from where the tool runs.
    assert load_settings({"catalogue": "shop.yaml"}, {}, path).catalogue == PRODUCTS
    assert load_settings({}, {"RECONCILER_CATALOGUE": "shop.yaml"}, path).catalogue == PRODUCTS


def test_a_flag_given_as_none_is_not_given(config):
    path = config("source: {url: s3://file}")
    assert load_settings({"source": None}, {"RECONCILER_SOURCE": "s3://env"}, path).source == "s3://env"
    assert load_settings({"source": None}, {}, path).source == "s3://file"


def test_an_empty_environment_variable_is_not_set(config):
    path = config("source: {url: s3://file}")
    assert load_settings({}, {"RECONCILER_SOURCE": ""}, path).source == "s3://file"


def test_flags_override_file_values_without_an_environment_variable(config):
    path = config("safety: {max_delete: 5, allow_empty_source: true}\napply: {lock_timeout: 9}\nplans_dir: p")
    s = load_settings({"max_delete": 1, "allow_empty_source": False, "lock_timeout": 2, "plans_dir": "q"}, {}, path)
    assert (s.max_delete, s.allow_empty_source, s.lock_timeout, s.plans_dir) == (1, False, 2.0, "q")


def test_where_the_config_file_comes_from(config):
    a = config("source: {url: s3://a}", "a.yaml")
    b = config("source: {url: s3://b}", "b.yaml")
    c = config("source: {url: s3://c}", "c.yaml")
    assert load_settings({}, {"RECONCILER_CONFIG": a}, None).source == "s3://a"
    assert load_settings({"config": b}, {"RECONCILER_CONFIG": a}, None).source == "s3://b"
    assert load_settings({"config": b}, {"RECONCILER_CONFIG": a}, c).source == "s3://c"


def test_environment_defaults_to_os_environ(config, monkeypatch):
    monkeypatch.setenv("RECONCILER_SOURCE", "s3://from-os-environ")
    monkeypatch.delenv("RECONCILER_CONFIG", raising=False)
    assert load_settings({}).source == "s3://from-os-environ"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n", "null\n"])
def test_an_empty_config_file_is_all_defaults(config, text):
    assert load_settings({}, {}, config(text)) == Settings()


def test_empty_sections_are_fine(config):
    assert load_settings({}, {}, config("source: {}\ndatabase: {}\nlayout: {}\nsafety: {}\napply: {}\n")) == Settings()


# --------------------------------------------------------------------------- errors


def error_of(path: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_settings({}, {}, path)
    message = str(e.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("source: [unclosed\n", "is not valid YAML at line 2"),
        ("source:\n  url: a\n bad: indentation\n", "is not valid YAML at line 3"),
        ("source: {url: a, url: b", "is not valid YAML"),
        ("\tsource: x\n", "is not valid YAML"),
        ("a: *undefined\n", "is not valid YAML"),
        ("!!python/object/apply:os.system ['true']\n", "is not valid YAML"),
        ("cdn_base_url: 2001-13-01\n", "is not valid YAML"),  # a date YAML cannot build
        ("cdn_base_url: !!int abc\n", "is not valid YAML"),
        ("cdn_base_url: !!timestamp soon\n", "is not valid YAML"),
    ],
)
def test_invalid_yaml(config, text, expected):
    assert expected in error_of(config(text))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("bucket: media\n", "unknown key 'bucket'"),
        ("source:\n  bucket: media\n", "unknown key 'source.bucket'"),
        ("source: {url: s3://m, bucket: media, acl: x}\n", "unknown key 'source.acl'"),  # the first, sorted
        ("safety: {max_deletes: 3}\n", "unknown key 'safety.max_deletes'"),
        ("aws_secret_access_key: x\n", "unknown key 'aws_secret_access_key'"),
        ("1: one\nsource: {}\n", "unknown key '1'"),
        ("1: one\nzz: two\n", "unknown key"),  # keys of mixed types
        ("null: x\n", "unknown key 'None'"),
    ],
)
def test_unknown_keys_are_named(config, text, expected):
    assert expected in error_of(config(text))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("source: s3://media\n", "source must be of type object"),
        ("source: {url: 5}\n", "source.url must be of type string"),
        ("source: {max_workers: eight}\n", "source.max_workers must be of type integer"),
        ("source: {max_workers: 0}\n", "source.max_workers"),
        ("source: {addressing_style: sideways}\n", "source.addressing_style"),
        ("database: {url: [a, b]}\n", "database.url must be of type string or null"),
        ("cdn_base_url: {host: x}\n", "cdn_base_url must be of type string"),
        ("cdn_base_url: ''\n", "cdn_base_url"),
        ("layout: {images: jpg}\n", "layout.images must be of type array"),
        ("layout: {images: [jpg, 5]}\n", "layout.images.1 must be of type string"),
        ("layout: {images: []}\n", "layout.images"),
        ("safety: {allow_empty_source: 'yes please'}\n", "safety.allow_empty_source must be of type boolean"),
        ("safety: {max_delete: -1}\n", "safety.max_delete"),
        ("safety: {max_delete_percent: 101}\n", "safety.max_delete_percent"),
        ("apply: {lock_timeout: soon}\n", "apply.lock_timeout must be of type number"),
        ("apply: []\n", "apply must be of type object"),
        ("apply: {lock_timeout: .inf}\n", "apply.lock_timeout must be a finite number"),
        ("safety: {max_delete_percent: .nan}\n", "safety.max_delete_percent must be a finite number"),
        ("plan: {batch_rows: 0}\n", "plan.batch_rows"),
        ("plan: {batch_rows: many}\n", "plan.batch_rows must be of type integer"),
        ("catalogue: 5\n", "catalogue: 5 is not valid"),
        ("catalogue: shop\n", "there is no shipped catalogue 'shop'"),
        ("catalogue: shop.yaml\n", "shop.yaml does not exist"),
        ("catalogue: {name: x}\n", "catalogue spec in the config file"),
        ("catalogue: product-images\nlayout: {images: [jpg]}\n", "adjusts the creators catalogue only"),
    ],
)
def test_wrong_types_and_values_name_the_key(config, text, expected):
    assert expected in error_of(config(text))


@pytest.mark.parametrize("text", ["- source\n- database\n", "just a string\n", "42\n", "[]\n"])
def test_the_top_level_must_be_a_mapping(config, text):
    assert "must be a mapping" in error_of(config(text))


def test_a_missing_config_file(tmp_path):
    assert "does not exist" in error_of(str(tmp_path / "nope.yaml"))


def test_a_folder_as_config_file(tmp_path):
    assert "is a folder" in error_of(str(tmp_path))


def test_a_config_file_that_is_not_utf8(config):
    assert "not UTF-8" in error_of(config(b"source: {url: caf\xe9}\n"))


def test_a_deeply_nested_config_file(config):
    error_of(config("source: " + "[" * 600 + "]" * 600 + "\n"))  # PyYAML recurses per level


def test_the_error_never_echoes_the_database_password(config):
    message = error_of(config("database: {url: 'postgresql://app:s3cret@db/prod', password: s3cret}\n"))
    assert "unknown key 'database.password'" in message and "s3cret" not in message


# --------------------------------------------------------------------------- fuzz

_FRAGMENTS = st.sampled_from([
    "source", "database", "layout", "safety", "apply", "url", "max_workers", "images", "cdn_base_url",
    ":", ": ", "\n", "  ", "    ", "- ", "{", "}", "[", "]", ",", "&a ", "*a", "? ", "!!int ", "!!float ",
    "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!python/name:os.system ", "!foo ", "'", '"', "#", "|",
    ">", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "2001-13-01", "2001-02-03", "1e9999", ".nan",
    "0x1F", "0o9", "~", "null", "true", "yes", "<<: ", "=", "\t", "\x00", "\ufeff", "é", "\ud800", "12", "-3",
])


def _check(path: str) -> None:
    try:
        result = load_settings({}, {}, path)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(result, Settings)


def _write(text: str | bytes) -> str:
    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return path


@settings(max_examples=150)
@given(st.lists(_FRAGMENTS, max_size=30).map("".join) | st.binary(max_size=60))
def test_random_yaml_text_raises_only_config_error(text):
    path = _write(text)
    try:
        _check(path)
    finally:
        os.unlink(path)


_KEYS = st.sampled_from(["source", "database", "layout", "catalogue", "safety", "apply", "cdn_base_url", "plans_dir",
                         "url", "endpoint_url", "region", "addressing_style", "max_workers", "state_dir", "images",
                         "videos", "profile_folder", "icon_names", "banner_names", "allow_empty_source", "max_delete",
                         "max_delete_percent", "require_signature", "lock_timeout", "bucket"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200) | st.floats(allow_nan=False) | st.text(max_size=6)
    | st.sampled_from(["auto", "path", "jpg", "s3://m"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS | st.integers(0, 2), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=150)
@given(st.dictionaries(_KEYS, _VALUES, max_size=5) | _VALUES)
def test_random_yaml_structures_raise_only_config_error(data):
    path = _write(yaml.safe_dump(data, allow_unicode=True))
    try:
        _check(path)
    finally:
        os.unlink(path)


def test_endpoint_precedence_flag_then_s3_variable_then_generic_variable_then_file(config):
    path = config("source: {endpoint_url: https://file.example}")
    env = {"AWS_ENDPOINT_URL_S3": "https://s3-env.example", "AWS_ENDPOINT_URL": "https://env.example"}
    assert load_settings({"endpoint_url": "https://flag.example"}, env, path).endpoint_url == "https://flag.example"
    assert load_settings({}, env, path).endpoint_url == "https://s3-env.example"
    assert load_settings({}, {"AWS_ENDPOINT_URL": "https://env.example"}, path).endpoint_url == "https://env.example"
    assert load_settings({}, {}, path).endpoint_url == "https://file.example"


@pytest.mark.parametrize(
    "source, kwargs, env, expected",
    [
        ("s3://media/x", {"region": "eu-west-1"}, {}, "https://media.s3.eu-west-1.amazonaws.com"),
        ("s3://media", {}, {"AWS_DEFAULT_REGION": "ap-south-1"}, "https://media.s3.ap-south-1.amazonaws.com"),
        ("s3://my.media", {"region": "eu-west-1"}, {}, "https://s3.eu-west-1.amazonaws.com/my.media"),
        ("s3://media", {"endpoint_url": "http://minio:9000", "addressing_style": "path"}, {}, "http://minio:9000/media"),
        ("s3://media", {"endpoint_url": "http://minio:9000/"}, {}, "http://minio:9000/media"),
        ("s3://media", {"endpoint_url": "https://nyc3.digitaloceanspaces.com", "addressing_style": "virtual"}, {},
         "https://media.nyc3.digitaloceanspaces.com"),
        ("/srv/bucket", {}, {}, "file:///srv/bucket"),
        ("file:///srv/my%20bucket", {}, {}, "file:///srv/my%20bucket"),
    ],
)
def test_default_cdn_base_url_is_the_sources_own_url(monkeypatch, source, kwargs, env, expected):
    from reconciler.commands import default_cdn_base_url
    from reconciler.config import Settings

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_cdn_base_url(Settings(source=source, **kwargs)) == expected


def test_a_folder_source_base_is_absolute(monkeypatch, tmp_path):
    from reconciler.commands import default_cdn_base_url
    from reconciler.config import Settings

    monkeypatch.chdir(tmp_path)
    assert default_cdn_base_url(Settings(source="bucket")) == f"file://{tmp_path}/bucket"


# --------------------------------------------------------------------------- URL settings

BASE = ("https", "http", "file")


@pytest.mark.parametrize("url", [
    "https://cdn.example.com", "https://cdn.example.com/media/", "http://127.0.0.1:9000", "http://[::1]:9000/x",
    "https://CDN.Example.com.", "http://minio:9000", "file:///srv/bucket", "file://localhost/srv/my%20bucket",
])
def test_urls_that_are_accepted(url):
    assert check_url(url, "cdn_base_url", schemes=BASE) == url


@pytest.mark.parametrize("url, problem", [
    ("media.example.internal", "is not a URL: write it with its scheme, e.g. https://media.example.internal or "
                               "http://media.example.internal"),
    ("localhost:9000", "is not a URL"),
    ("s3://media", "must start with https:// or http:// or file://"),
    ("https://", "names no host; write https://HOST[:PORT][/PATH]"),
    ("https:///media", "names no host"),
    ("https://cdn.example.com:", "has an invalid port"),
    ("https://cdn.example.com:0", "has an invalid port"),
    ("https://cdn.example.com:70000", "has an invalid port"),
    ("https://cdn_example.com", "has an invalid host name 'cdn_example.com'"),
    ("https://-cdn.example.com", "has an invalid host name"),
    ("https://cdn example.com", "holds spaces or control characters"),
    ("https://cdn.example.com/a\tb", "holds spaces or control characters"),
    ("https://cdn.example.com/?v=2", "must not have a query (?…) or a fragment (#…)"),
    ("https://cdn.example.com/#x", "must not have a query"),
    ("https://cdn.example.com/?", "must not have a query"),
    ("file://server/share", "must be file:///ABSOLUTE/PATH"),
    ("https://user:pw@cdn.example.com", "must not hold a user name or password"),
    ("https://user:p[w@cdn.example.com", "is not a valid URL"),
    ("http://[::1", "is not a valid URL; write https://HOST[:PORT][/PATH]"),
    ("http://[cdn.example.com]", "is not a valid URL"),
    ("http://[::1]x", "is not a valid URL"),
    ("https://bücher.example", "has an invalid host name 'bücher.example' (write a non-ASCII name in its xn-- form)"),
])
def test_urls_that_are_refused_say_what_to_write(url, problem):
    with pytest.raises(ConfigError) as e:
        check_url(url, "--cdn-base-url", schemes=BASE)
    assert str(e.value).startswith("--cdn-base-url '") and problem in str(e.value)
    assert "pw@" not in str(e.value)


def test_an_endpoint_is_http_or_https(config):
    with pytest.raises(ConfigError, match=r"source\.endpoint_url 'file:///x' must start with https:// or http://$"):
        load_settings({}, {}, config("source: {endpoint_url: 'file:///x'}"))
    assert load_settings({}, {"AWS_ENDPOINT_URL": ""}, None).endpoint_url is None  # empty: not set


_URLISH = st.text(st.sampled_from("ab1.-_:/@[]%?#é \t"), max_size=30)


@settings(max_examples=300)
@given(st.text(max_size=40) | st.builds("{}://{}".format, st.sampled_from(["http", "https", "file", "s3", ""]), _URLISH))
def test_any_url_setting_is_accepted_or_refused_as_a_config_error(value):
    try:
        assert check_url(value, "--cdn-base-url", schemes=BASE) == value
    except ConfigError as e:
        assert str(e).startswith("--cdn-base-url ")


@settings(max_examples=200)
@given(st.text(st.sampled_from("ab1.-_:@[]%é \t"), max_size=30), _URLISH)  # before: in the URL's authority
def test_a_password_in_a_url_setting_is_never_shown(before, after):
    try:
        check_url(f"https://{before}deploy:s3cretpw@{after}", "--cdn-base-url", schemes=BASE)
    except ConfigError as e:
        assert "s3cretpw" not in str(e)
