"""A real S3 server on loopback for the loader's s3:// tests: moto's standalone server.

moto needs boto3/botocore, which pin python-dateutil<3 while this project's kubernetes
client needs >=3, so it cannot live in the project's venv. It gets a venv of its own under
the cache (`<cache>/s3-venv`, see e2e.paths.cache_root), created on first use with progress
printed and reused afterwards; a stamp file records the pinned version, so a changed pin
rebuilds it. Creation is serialized with a file lock (concurrent pytest runs).

By default the server runs with IAM authentication on (INITIAL_NO_AUTH_ACTION_COUNT): the first
requests, made here with the side venv's boto3, create the IAM users the tests sign with;
every later request is authenticated and authorized like AWS does it (SigV4, IAM policy).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sidevenv
from e2e.paths import cache_root

MOTO_REQUIREMENT = "moto[server]==5.2.5"
REGION = "us-east-1"
# The IAM calls made without authentication before the server starts checking signatures.
_SETUP_CALLS = 7
_SETUP_SCRIPT = r"""
import json, sys
import boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
out = {}
iam.create_user(UserName="reader")
iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="reader")["AccessKey"]
out["reader"] = [key["AccessKeyId"], key["SecretAccessKey"]]
iam.create_user(UserName="nobody")
key = iam.create_access_key(UserName="nobody")["AccessKey"]
out["nobody"] = [key["AccessKeyId"], key["SecretAccessKey"]]
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action":
         "sts:AssumeRoleWithWebIdentity", "Principal": {"Federated": "oidc"}}]}
role = iam.create_role(RoleName="model-reader", AssumeRolePolicyDocument=json.dumps(trust))
iam.put_role_policy(RoleName="model-reader", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
                   {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}))
out["role"] = role["Role"]["Arn"]
print(json.dumps(out))
"""


class S3ServerUnavailable(RuntimeError):
    """moto could not be installed or started here; the message says why."""


def venv_dir() -> Path:
    override = os.environ.get("CCS_S3_VENV")
    return Path(override).expanduser() if override else cache_root() / "s3-venv"


def ensure_venv(path: Path | None = None) -> Path:
    """Create (once) the side venv with moto's server; return its python."""
    return sidevenv.ensure(
        path or venv_dir(),
        MOTO_REQUIREMENT,
        "s3-server",
        S3ServerUnavailable,
        shown=("Collecting", "Successfully", "ERROR"),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    reader: tuple[str, str]  # access key with s3:* on everything
    nobody: tuple[str, str]  # a valid access key with no permission at all
    role_arn: str  # a role web identities may assume (IRSA), allowed to list and get
    region: str = REGION


@contextmanager
def moto_server(
    log_path: Path, auth: bool = True, startup_timeout_s: float = 30.0
) -> Iterator[S3Server]:
    """Run moto_server on a free loopback port, with IAM auth on unless `auth` is False
    (moto then accepts any signature: needed for STS AssumeRoleWithWebIdentity, which moto
    cannot serve with auth on); stop it on exit."""
    python = ensure_venv()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_DEFAULT_REGION": REGION,
    }
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_CALLS)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(python.parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise S3ServerUnavailable(
                    f"moto_server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise S3ServerUnavailable(
                        f"moto_server not listening on {port} after {startup_timeout_s} s"
                    ) from None
                time.sleep(0.1)
        setup = subprocess.run(
            [str(python), "-c", _SETUP_SCRIPT, endpoint],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if setup.returncode != 0:
            raise S3ServerUnavailable(f"IAM setup against moto failed:\n{setup.stderr[-2000:]}")
        keys = json.loads(setup.stdout)
        reader, nobody = keys["reader"], keys["nobody"]
        yield S3Server(endpoint, (reader[0], reader[1]), (nobody[0], nobody[1]), keys["role"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
