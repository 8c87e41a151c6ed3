#!/usr/bin/env python3
"""The function's IAM policy, proven without AWS: the local DynamoDB (moto's server, through
tools/local_dynamodb.py) enforces IAM, and the function runs with the credentials of a role that
has exactly the policy template.yaml grants.

    setup(endpoint, table)   before enforcement: the role (its policy taken from template.yaml as
                             the SAM translator expands it, with the table's and index's ARNs
                             resolved), an admin user for the caller's own reads, then IAM is
                             enforced. Returns (the role's temporary credentials, the admin's).
    probe(endpoint, table)   the check itself works: with the template's policy the function's
                             calls pass and others (Scan, DeleteItem) are refused; a policy with
                             one action removed, or Query granted on the table instead of the
                             index, is refused where the function would need it.

`make run IAM=1` (tools/demo.py --iam) runs the whole local flow that way and fails on any
AccessDenied; `make iam-check` runs it in token and App mode, and is part of `make test`.

What moto does not check, so neither does this: Condition blocks, NotResource/NotAction, and the
per-item permissions of BatchGetItem/BatchWriteItem/Transact* (the function uses none of them; a
test in tools/check_template.py asserts the DynamoDB operations in src/ are exactly the granted
ones). CloudWatch Logs and KMS are not called locally: the log-group statement is checked
statically only.
"""
import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_template  # noqa: E402  (sets the region the translator needs)

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
REGION = "us-east-1"
LOCAL = {"aws_access_key_id": "local", "aws_secret_access_key": "local", "region_name": REGION}


def template_policy(table):
    """The function role's policy document from template.yaml, its ARNs resolved for `table`
    (conditional statements whose condition is off locally, KmsKeyArn empty, left out)."""
    from cfnlint.decode import decode

    raw, matches = decode(str(ROOT / "template.yaml"))
    if matches:
        raise SystemExit(f"template.yaml does not parse: {matches}")
    role = check_template.expand(raw)["Resources"]["FunctionRole"]
    table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}"
    log_group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/local-webhook:*"

    def resolve(value):
        if value == {"Fn::GetAtt": ["DeploymentsTable", "Arn"]}:
            return table_arn
        if value == {"Fn::Sub": "${DeploymentsTable.Arn}/index/due"}:
            return f"{table_arn}/index/due"
        if value == {"Fn::GetAtt": ["FunctionLogGroup", "Arn"]}:
            return log_group
        raise SystemExit(f"iam_check: a resource it cannot resolve: {value}")

    statements = []
    for policy in role["Properties"].get("Policies", []):
        for st in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in st:
                continue  # HasKmsKey: off locally
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            statements.append({**st, "Action": actions, "Resource": [resolve(r) for r in resources]})
    if role["Properties"].get("ManagedPolicyArns"):
        raise SystemExit("iam_check: the role has managed policies; moto would not know their contents")
    return {"Version": "2012-10-17", "Statement": statements}


def _clients(endpoint, **creds):
    import boto3
    creds = {**LOCAL, **creds}
    return (boto3.client("iam", endpoint_url=endpoint, **creds), boto3.client("sts", endpoint_url=endpoint, **creds))


def role_credentials(endpoint, name, policy):
    """A role with `policy` (inline), assumed: its temporary credentials."""
    iam, sts = _clients(endpoint)
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName="function", PolicyDocument=json.dumps(policy))
    c = sts.assume_role(RoleArn=arn, RoleSessionName="function")["Credentials"]
    return {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"]}


def admin_credentials(endpoint):
    iam, _ = _clients(endpoint)
    iam.create_user(UserName="local-admin")
    iam.put_user_policy(UserName="local-admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="local-admin")["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def enforce(endpoint):
    """From now on moto authenticates and authorizes every request."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def setup(endpoint, table):
    """The template's role, the mutated roles of `probe`, and an admin; then IAM is enforced."""
    policy = template_policy(table)
    roles = {"template": role_credentials(endpoint, "deploy-webhook-function", policy)}
    for name, mutated in mutations(policy).items():
        roles[name] = role_credentials(endpoint, f"deploy-webhook-{name}", mutated)
    admin = admin_credentials(endpoint)
    enforce(endpoint)
    return roles, admin


def mutations(policy):
    """The template's policy with one thing taken away, each of which the function would miss."""
    out = {}
    without_update = json.loads(json.dumps(policy))
    for st in without_update["Statement"]:
        st["Action"] = [a for a in st["Action"] if a != "dynamodb:UpdateItem"]
    out["no-update-item"] = without_update
    index_as_table = json.loads(json.dumps(policy))
    for st in index_as_table["Statement"]:
        st["Resource"] = [r.removesuffix("/index/due") for r in st["Resource"]]
    out["query-on-table-not-index"] = index_as_table
    return out


def denied(call):
    from botocore.exceptions import ClientError
    try:
        call()
    except ClientError as err:
        # moto answers an IAM refusal 403 with an XML body the JSON protocol does not parse.
        if "AccessDenied" in str(err) or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
            return True
        raise
    return False


def probe(endpoint, table, roles):
    """Returns the failures: the enforcement must let the template's role do the function's calls
    and nothing else, and must refuse each mutated role what it lost."""
    import boto3

    def ddb(creds):
        return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION, **creds)

    key = {"pk": {"S": "IAM#probe"}, "sk": {"S": "PROBE"}}
    query = {"TableName": table, "IndexName": "due", "KeyConditionExpression": "due_pk = :p",
             "ExpressionAttributeValues": {":p": {"S": "DUE"}}}
    fn = ddb(roles["template"])
    calls = {
        "PutItem": lambda c: c.put_item(TableName=table, Item={**key, "n": {"N": "1"}}),
        "GetItem": lambda c: c.get_item(TableName=table, Key=key),
        "UpdateItem": lambda c: c.update_item(TableName=table, Key=key, UpdateExpression="SET n = :n",
                                              ExpressionAttributeValues={":n": {"N": "2"}}),
        "Query on the due index": lambda c: c.query(**query),
    }
    failures = []
    for name, call in calls.items():
        if denied(lambda: call(fn)):
            failures.append(f"the template's role was refused {name}")
    for name, call in {"Scan": lambda: fn.scan(TableName=table),
                       "DeleteItem": lambda: fn.delete_item(TableName=table, Key=key),
                       "Query on the table": lambda: fn.query(
                           TableName=table, KeyConditionExpression="pk = :p",
                           ExpressionAttributeValues={":p": {"S": "IAM#probe"}}),
                       "DescribeTable": lambda: fn.describe_table(TableName=table)}.items():
        if not denied(call):
            failures.append(f"the template's role was allowed {name}: enforcement is not on")
    if not denied(lambda: calls["UpdateItem"](ddb(roles["no-update-item"]))):
        failures.append("a role without dynamodb:UpdateItem could still update: removing it would go unnoticed")
    if not denied(lambda: calls["Query on the due index"](ddb(roles["query-on-table-not-index"]))):
        failures.append("Query granted on the table only could still query the index: the index ARN is not checked")
    return failures


def main():
    """Standalone: start a local DynamoDB, set up, probe; exit 1 on a failure."""
    import subprocess
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools/local_dynamodb.py"), "--table", "iam-check",
                             "--exit-with-parent"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode().strip()
        endpoint = f"http://127.0.0.1:{line.split()[1]}"
        roles, _ = setup(endpoint, "iam-check")
        failures = probe(endpoint, "iam-check", roles)
    finally:
        proc.terminate()
        proc.wait()
    for f in failures:
        print(f"iam_check: FAILED: {f}")
    if not failures:
        print("iam_check: ok: moto enforces the template's policy (its calls pass, Scan/DeleteItem/"
              "DescribeTable and a Query on the table are refused, a removed UpdateItem or index ARN is noticed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
