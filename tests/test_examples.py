"""The examples/ folder, the README and the documentation's pages stay true to the tool.

Every YAML file parses, every example config passes the config schema, the GitHub
workflow (and the shell blocks of the README and of docs/) name only commands and flags
that ``reconciler <command> --help`` lists, and the IAM policy grants ``s3:ListBucket`` only.
No database and no network: ``--help`` exits before anything is opened.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from reconciler.config import load_settings, read_config_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORKFLOW = EXAMPLES / "github-workflow.yml"
IAM_POLICY = EXAMPLES / "iam-policy.json"
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))

YAML_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yml", ".yaml") and "bucket" not in p.parts)
CONFIG_FILES = sorted((EXAMPLES / "config").glob("*.yaml")) + sorted((EXAMPLES / "catalogues").glob("*/reconciler.yaml"))


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


# --------------------------------------------------------------------------- YAML and configs


def test_the_expected_examples_exist():
    for name in ("aws-s3.yaml", "digitalocean-spaces.yaml", "minio.yaml"):
        assert (EXAMPLES / "config" / name).is_file(), name
    for path in (WORKFLOW, IAM_POLICY, EXAMPLES / "README.md", EXAMPLES / "catalogues" / "creators" / "reconciler.yaml"):
        assert path.is_file(), path


@pytest.mark.parametrize("path", YAML_FILES, ids=_ids(YAML_FILES))
def test_yaml_parses(path):
    data = yaml.safe_load(path.read_text("utf-8"))
    assert isinstance(data, dict) and data, f"{path} is not a non-empty mapping"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_example_config_passes_the_schema(path):
    data = read_config_file(str(path))
    assert data["source"]["url"]
    assert data["cdn_base_url"]
    settings = load_settings(flags={}, env={}, config_path=str(path))
    assert settings.source == data["source"]["url"]
    assert settings.cdn_base_url == data["cdn_base_url"]


@pytest.mark.parametrize("path", sorted((EXAMPLES / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_hold_no_credentials(path):
    """Credentials come only from the environment; a database URL would hold a password."""
    data = read_config_file(str(path))
    assert (data.get("database") or {}).get("url") is None
    text = path.read_text("utf-8")
    assert "environment" in text.lower(), "say in a comment where the credentials come from"
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        assert not re.search(r"(?i)(secret|password|access_key|token)\s*:", code), line


def test_minio_example_uses_path_style_and_an_endpoint():
    s = load_settings(flags={}, env={}, config_path=str(EXAMPLES / "config" / "minio.yaml"))
    assert s.addressing_style == "path"
    assert s.endpoint_url and s.endpoint_url.startswith(("http://", "https://"))
    assert s.region
    assert s.source.startswith("s3://")


def test_spaces_example_has_endpoint_and_region():
    s = load_settings(flags={}, env={}, config_path=str(EXAMPLES / "config" / "digitalocean-spaces.yaml"))
    assert s.endpoint_url and "digitaloceanspaces.com" in s.endpoint_url
    assert s.region and s.region in s.endpoint_url


# --------------------------------------------------------------------------- shell invocations

_SPLIT = re.compile(r"&&|\|\||[;|()`]")
_LEAD = {"then", "else", "do", "if", "elif", "while", "until", "!", "time", "$", "{"}


def _shell_lines(script: str) -> list[str]:
    """Logical lines: backslash continuations joined, comments dropped."""
    script = re.sub(r"\\\n\s*", " ", script)
    out = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(line)
    return out


def _tokens(segment: str) -> list[str]:
    try:
        return shlex.split(segment, comments=True)
    except ValueError:  # a quote opened in another segment of the same line
        return segment.split()


def invocations(script: str) -> list[list[str]]:
    """Every ``reconciler …`` command in a shell script, as its argument tokens."""
    found = []
    for line in _shell_lines(script):
        for segment in _SPLIT.split(line):
            tokens = _tokens(segment)
            while tokens and tokens[0] in _LEAD:
                tokens = tokens[1:]
            if tokens and tokens[0] == "reconciler":
                args = []
                for t in tokens[1:]:
                    if re.fullmatch(r"\d?[<>].*|\}", t):  # a redirection or a closing brace
                        break
                    args.append(t)
                found.append(args)
    return found


def _workflow_scripts() -> list[str]:
    wf = yaml.safe_load(WORKFLOW.read_text("utf-8"))
    scripts = []
    for job in wf["jobs"].values():
        for step in job.get("steps", []):
            if "run" in step:
                scripts.append(step["run"])
    return scripts


def _markdown_scripts(path: Path) -> list[str]:
    text = path.read_text("utf-8")
    blocks = re.findall(r"```(?:sh|bash|shell|console)\n(.*?)```", text, flags=re.S)
    scripts = []
    for block in blocks:
        # console blocks: only the lines typed at a "$ " prompt
        lines = [ln[2:] if ln.startswith("$ ") else ln for ln in block.splitlines() if ln.startswith("$ ")]
        scripts.append("\n".join(lines) if lines else block)
    return scripts


def _split_command(args: list[str], top_help: str) -> tuple[list[str], str | None, list[str]]:
    """(options before the command, the command, the rest)."""
    takes_value = {m.group(1) for m in re.finditer(r"(--?[\w-]+) [A-Z]+", top_help)}
    before: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            before.append(a)
            if a in takes_value and "=" not in a:
                i += 1
            i += 1
            continue
        return before, a, args[i + 1 :]
    return before, None, []


def _flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", t)]


def check_invocations(cli, scripts: list[str], where: str) -> int:
    top = cli("--help")
    assert top.code == 0, top.err
    seen = 0
    helps: dict[str, str] = {}
    for script in scripts:
        for args in invocations(script):
            seen += 1
            before, command, rest = _split_command(args, top.out)
            if command is None:  # `reconciler --version`, `reconciler --help`
                for flag in _flags(before):
                    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", top.out), (where, args)
                continue
            if command not in helps:
                r = cli(command, "--help")
                assert r.code == 0, f"{where}: `reconciler {command}` is not a command ({r.err.strip()})"
                assert f"usage: reconciler {command}" in r.out
                helps[command] = r.out
            for flag in _flags(before + rest):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[command]), (
                    f"{where}: `reconciler {command}` has no option {flag} (in: reconciler {' '.join(args)})"
                )
    return seen


def test_the_invocation_extractor():
    script = (
        "set +e\n"
        'if [ -n "$K" ]; then\n  reconciler plan -o "$PLAN" --detailed-exitcode \\\n    --sign\nfi\n'
        "rc=$?\n"
        'reconciler show "$P" --format markdown >> "$GITHUB_STEP_SUMMARY"\n'
        "x=$(reconciler history --limit 5) && reconciler --config c.yaml apply p.json 2> err.txt\n"
        "# reconciler nothing --in-a-comment\n"
        'python -m pip install "git+https://example.invalid/reconciler@v1"\n'
    )
    assert invocations(script) == [
        ["plan", "-o", "$PLAN", "--detailed-exitcode", "--sign"],
        ["show", "$P", "--format", "markdown"],
        ["history", "--limit", "5"],
        ["--config", "c.yaml", "apply", "p.json"],
    ]


def test_the_checker_catches_an_unknown_flag_and_command(cli):
    with pytest.raises(AssertionError, match="no option --no-such-flag"):
        check_invocations(cli, ["reconciler plan --no-such-flag"], "test")
    with pytest.raises(AssertionError, match="is not a command"):
        check_invocations(cli, ["reconciler frobnicate -o x"], "test")
    assert check_invocations(cli, ["reconciler --config c.yaml plan -o x.json --model A"], "test") == 1


def test_workflow_uses_only_real_commands_and_flags(cli):
    seen = check_invocations(cli, _workflow_scripts(), str(WORKFLOW.relative_to(ROOT)))
    assert seen >= 6, "the workflow should plan, show, apply and check drift"


def test_readme_uses_only_real_commands_and_flags(cli):
    assert README.exists(), "the README is the first thing a user reads"
    seen = check_invocations(cli, _markdown_scripts(README), "README.md")
    assert seen >= 5


def test_the_documentation_uses_only_real_commands_and_flags(cli):
    seen = sum(check_invocations(cli, _markdown_scripts(page), str(page.relative_to(ROOT))) for page in PAGES)
    assert seen >= 30, "the pages show the commands at work"


# --------------------------------------------------------------------------- workflow shape


def test_workflow_triggers_and_jobs():
    wf = yaml.safe_load(WORKFLOW.read_text("utf-8"))
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert {"pull_request", "push", "schedule"} <= set(on)
    assert on["push"]["branches"] == ["main"]
    scripts = _workflow_scripts()
    joined = "\n".join(scripts)
    commands = [args for s in scripts for args in invocations(s)]
    assert any(a[:1] == ["plan"] and ("-o" in a or "--output" in a) for a in commands)
    assert re.search(r"plans/pr-\$\{?\w+\}?\.json", joined), "the PR job writes plans/pr-<n>.json"
    assert any(a[:1] == ["show"] and "markdown" in a for a in commands), "the PR comment uses show --format markdown"
    assert any(a[:1] == ["apply"] for a in commands)
    assert any(a[:1] == ["apply"] and "--require-signature" in a for a in commands)
    assert any(a[:1] == ["plan"] and "--sign" in a for a in commands)
    assert "secrets.DATABASE_URL" in WORKFLOW.read_text("utf-8")
    assert "upload-artifact" in WORKFLOW.read_text("utf-8")
    assert "gh pr comment" in joined


def test_workflow_tells_drift_from_failure():
    """`--detailed-exitcode` exits 2 on changes: the script must read $? with `set -e` off."""
    checked = 0
    for script in _workflow_scripts():
        if "--detailed-exitcode" not in script:
            continue
        checked += 1
        lines = _shell_lines(script)
        plan_at = next(i for i, ln in enumerate(lines) if "--detailed-exitcode" in ln)
        assert "set +e" in lines[:plan_at], "set +e before the plan, or exit 2 ends the step"
        after = lines[plan_at:]
        assert any(re.fullmatch(r"rc=\$\?", ln) for ln in after), "read the exit code right after the plan"
        assert any(re.match(r"2\)", ln) for ln in after), "handle exit 2 (changes) on its own"
        assert any(re.match(r"\*\)", ln) for ln in after), "every other code is a failure"
    assert checked >= 2


# --------------------------------------------------------------------------- IAM policy


def test_iam_policy_grants_only_list_bucket():
    policy = json.loads(IAM_POLICY.read_text("utf-8"))
    assert policy["Version"] == "2012-10-17"
    statements = policy["Statement"]
    statements = statements if isinstance(statements, list) else [statements]
    assert statements
    for st in statements:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert actions == ["s3:ListBucket"]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for arn in resources:
            # the bucket itself: ListBucket is granted on the bucket ARN, never on objects
            assert re.fullmatch(r"arn:aws:s3:::[a-z0-9.\-]+", arn), arn
        assert "NotAction" not in st and "NotResource" not in st


def test_docs_say_the_endpoint_flag_wins_over_the_environment():
    # The code takes --endpoint-url first (flag → environment → file); no document may say otherwise.
    docs = [README, EXAMPLES / "README.md", *PAGES, *CONFIG_FILES]
    for path in docs:
        text = " ".join(path.read_text(encoding="utf-8").replace("#", " ").split())
        assert not re.search(r"AWS_ENDPOINT_URL[^.;]*win over[^.;]*--endpoint-url", text), path
    text = " ".join((EXAMPLES / "README.md").read_text(encoding="utf-8").split())
    assert "`--endpoint-url` wins over `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`" in text
    aws = " ".join((EXAMPLES / "config" / "aws-s3.yaml").read_text(encoding="utf-8").replace("#", " ").split())
    assert "--endpoint-url wins over both" in aws


# --------------------------------------------------------------------------- serve examples

SERVE = EXAMPLES / "serve"


@pytest.mark.parametrize("name", ["aws-s3-sqs.yaml", "minio-webhook.yaml"])
def test_serve_examples_pass_the_schema(name):
    from reconciler.controller.options import load_serve_options

    path = SERVE / name
    data = read_config_file(str(path))
    options = load_serve_options(str(path), {})
    assert options.listen == data["serve"]["listen"] and options.auto_apply == data["serve"]["auto_apply"]
    for line in path.read_text("utf-8").splitlines():
        assert not re.search(r"(?i)(secret|password|access_key|token)\s*:", line.split("#", 1)[0]), line


def test_serve_aws_example_policies():
    policy = json.loads((SERVE / "iam-policy-sqs.json").read_text("utf-8"))
    actions = sorted(a for st in policy["Statement"] for a in st["Action"])
    assert actions == ["s3:ListBucket", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
    queue = json.loads((SERVE / "sqs-queue-policy.json").read_text("utf-8"))
    assert queue["Statement"][0]["Action"] == "sqs:SendMessage"
    notification = json.loads((SERVE / "s3-notification.json").read_text("utf-8"))
    assert notification["QueueConfigurations"][0]["QueueArn"] == queue["Statement"][0]["Resource"]


def test_systemd_unit_starts_serve():
    unit = (SERVE / "reconciler.service").read_text("utf-8")
    assert re.search(r"^ExecStart=\S+/reconciler serve$", unit, flags=re.M)
    assert "EnvironmentFile=" in unit and "KillSignal=SIGTERM" in unit


# --------------------------------------------------------------------------- very large buckets: shards, inventory

SHARDED_WORKFLOW = EXAMPLES / "github-sharded-workflow.yml"
K8S_JOB = EXAMPLES / "k8s-sharded-job.yaml"
IAM_INVENTORY = EXAMPLES / "iam-policy-inventory.json"


def _sharded_scripts() -> list[str]:
    wf = yaml.safe_load(SHARDED_WORKFLOW.read_text("utf-8"))
    return [step["run"] for job in wf["jobs"].values() for step in job.get("steps", []) if "run" in step]


def test_sharded_workflow_uses_only_real_commands_and_flags(cli):
    seen = check_invocations(cli, _sharded_scripts(), str(SHARDED_WORKFLOW.relative_to(ROOT)))
    assert seen >= 4


def test_sharded_workflow_plans_a_matrix_and_applies_each_plan():
    wf = yaml.safe_load(SHARDED_WORKFLOW.read_text("utf-8"))
    shards = wf["jobs"]["plan"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1)), "K of --shard K/N counts from 1"
    assert wf["env"]["SHARDS"] == str(len(shards))
    commands = [args for s in _sharded_scripts() for args in invocations(s)]
    assert any(a[:1] == ["plan"] and "--shard" in a for a in commands)
    assert any(a[:1] == ["apply"] for a in commands)
    assert "matrix" in wf["jobs"]["apply"]["strategy"]
    assert "upload-artifact" in SHARDED_WORKFLOW.read_text("utf-8")
    plan_script = next(s for s in _sharded_scripts() if "--detailed-exitcode" in s)
    lines = _shell_lines(plan_script)
    at = next(i for i, ln in enumerate(lines) if "--detailed-exitcode" in ln)
    assert "set +e" in lines[:at] and "rc=$?" in lines[at:]


def test_k8s_indexed_job_maps_the_completion_index_to_a_shard(cli):
    job = yaml.safe_load(K8S_JOB.read_text("utf-8"))
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    script = "\n".join(container["args"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SHARDS"] == str(spec["completions"])
    assert "$((JOB_COMPLETION_INDEX + 1))" in script, "JOB_COMPLETION_INDEX counts from 0, --shard K from 1"
    assert check_invocations(cli, [script], str(K8S_JOB.relative_to(ROOT))) == 1
    assert any(a[:1] == ["plan"] and "--shard" in a for a in invocations(script))


def test_inventory_iam_policy_reads_the_inventory_bucket_only():
    policy = json.loads(IAM_INVENTORY.read_text("utf-8"))
    actions = sorted(a for st in policy["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"]))
    assert actions == ["s3:GetObject", "s3:ListBucket"]
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and "NotAction" not in st
        if st["Action"] == "s3:GetObject":
            assert re.fullmatch(r"arn:aws:s3:::[a-z0-9.\-]+/.+\*", st["Resource"])
