"""`ccs-model-loader`: assemble the Triton model repository before tritonserver starts.

Runs as the `model-loader` init container of every ClaudeCodeService pod:

    ccs-model-loader --repository <spec.model.repository> --model-name <name> \
        --config /etc/ccs/model-config/config.pbtxt --model-store /models

and produces `<model-store>/<name>/{config.pbtxt, <version>/...}`, the layout Triton reads.

Repositories:
- an absolute path or `file:///path`: a directory baked into the image or mounted; version
  directories are *copied*, because the triton container may run a different image
  (the stock NVIDIA one) where the path does not exist.
- `pvc://<claim>/<path>`: the claim is mounted at /mnt/pvc/<claim> in both containers
  (render.py does that), so version directories are *symlinked*, never copied: large
  weights are not duplicated into the pod's emptyDir.
- `s3://<bucket>/<prefix>`: AWS S3 or an S3-compatible store (MinIO, Ceph, GCS interop);
  the objects of the version directories under the prefix are *downloaded* with the MinIO
  client into the staging directory. Endpoint, region and credentials come from the
  environment the way the AWS SDKs read them (see S3Settings.from_env). Every request has
  connect and read timeouts; transient failures (connection errors, timeouts, 5xx, SlowDown)
  are retried with exponential backoff, AWS_MAX_ATTEMPTS attempts at most.
- `gs://`, `az://`: not supported; the message says what to use instead (GCS through its
  S3-compatible endpoint, a PVC, or a baked path). (Triton can read object stores itself,
  but then the operator's config.pbtxt would not be the one served.)

The repository directory holds numbered version directories (`1/`, `2/`, ...) and, if
present, a config.pbtxt of its own, which is ignored: the operator's config wins. The result
is validated: the config parses with Triton's own protobuf schema (model_config_pb2), its
name matches --model-name, at least one version directory exists, versions a Specific
version policy names exist, and a Python-backend model has model.py. Any failure exits 2
with a message naming the argument, field or path. Exit 0 prints what was assembled.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from google.protobuf import text_format
from minio import Minio
from minio.credentials import WebIdentityProvider
from minio.error import InvalidResponseError, S3Error, ServerError
from tritonclient.grpc import model_config_pb2 as pb

from serving_image.modelcache import NodeCache, cache_key, link_tree

T = TypeVar("T")

PVC_MOUNT_ROOT = Path("/mnt/pvc")
S3_SCHEME = "s3://"
UNSUPPORTED_SCHEMES = {
    "gs": (
        "for Google Cloud Storage use its S3-compatible endpoint: repository "
        "s3://<bucket>/<path> with AWS_ENDPOINT_URL_S3=https://storage.googleapis.com and an "
        "HMAC key as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; or put the model on a "
        "PersistentVolumeClaim (pvc://<claim>/<path>) or bake it into the image (an absolute path)"
    ),
    "az": (
        "put the model on a PersistentVolumeClaim (pvc://<claim>/<path>, e.g. one backed by the "
        "Azure Blob CSI driver), copy it to an S3-compatible store (s3://), or bake it into "
        "the image (an absolute path)"
    ),
}
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
# S3 error codes worth another attempt; everything else (NoSuchBucket, AccessDenied, ...)
# fails at once.
RETRYABLE_S3_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
# The file each platform loads from a version directory when config.pbtxt names none.
DEFAULT_MODEL_FILENAMES = {
    "pytorch_libtorch": "model.pt",
    "onnxruntime_onnx": "model.onnx",
    "tensorrt_plan": "model.plan",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
}


class LoaderError(Exception):
    """The model repository cannot be assembled; the message names the field or path."""


@dataclass(frozen=True)
class Source:
    """Where the model's version directories come from, and how they reach the store."""

    path: Path
    link: bool  # symlink (shared mount) rather than copy

    @classmethod
    def resolve(cls, repository: str, pvc_root: Path = PVC_MOUNT_ROOT) -> Source:
        scheme = repository.split("://", 1)[0] if "://" in repository else ""
        if scheme in UNSUPPORTED_SCHEMES:
            raise LoaderError(
                f"--repository {repository!r}: {scheme}:// repositories are not supported by "
                f"ccs-model-loader; {UNSUPPORTED_SCHEMES[scheme]}"
            )
        if repository.startswith("pvc://"):
            rest = repository.removeprefix("pvc://")
            claim, _, sub = rest.partition("/")
            if not claim:
                raise LoaderError(f"--repository {repository!r}: pvc:// needs a claim name")
            base = pvc_root / claim
            path = (base / sub).resolve() if sub else base.resolve()
            if not path.is_relative_to(base.resolve()):
                raise LoaderError(f"--repository {repository!r}: path escapes the claim {claim}")
            return cls(path, link=True)
        if repository.startswith("file://"):
            path = Path(repository.removeprefix("file://"))
            if not path.is_absolute():
                raise LoaderError(f"--repository {repository!r}: file:// needs an absolute path")
            return cls(path, link=False)
        if repository.startswith("/"):
            return cls(Path(repository), link=False)
        raise LoaderError(
            f"--repository {repository!r}: expected an absolute path, file:///path, "
            "pvc://<claim>/<path> or s3://<bucket>/<path>"
        )


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise LoaderError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 endpoint: the AWS SDKs' environment variables, read once."""

    endpoint: str = DEFAULT_S3_ENDPOINT
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    ca_bundle: str | None = None
    # IRSA (EKS IAM roles for service accounts): a projected token exchanged at STS.
    web_identity_token_file: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    sts_endpoint: str | None = None
    max_attempts: int = 5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
        AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION, AWS_CA_BUNDLE, AWS_MAX_ATTEMPTS;
        without a key pair, AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN (+ AWS_ROLE_SESSION_NAME,
        AWS_ENDPOINT_URL_STS) as IRSA sets them; CCS_S3_CONNECT_TIMEOUT_SECONDS and
        CCS_S3_READ_TIMEOUT_SECONDS (no AWS standard)."""
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        access_key = env.get("AWS_ACCESS_KEY_ID") or None
        secret_key = env.get("AWS_SECRET_ACCESS_KEY") or None
        if bool(access_key) != bool(secret_key):
            present, missing = (
                ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                if access_key
                else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            )
            raise LoaderError(f"{present} is set but {missing} is not: set both or neither")
        raw_attempts = env.get("AWS_MAX_ATTEMPTS") or "5"
        if not raw_attempts.isdigit() or int(raw_attempts) < 1:
            raise LoaderError(f"AWS_MAX_ATTEMPTS={raw_attempts!r}: expected an integer >= 1")
        settings = cls(
            endpoint=endpoint or DEFAULT_S3_ENDPOINT,
            access_key=access_key,
            secret_key=secret_key,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            ca_bundle=env.get("AWS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or None,
            web_identity_token_file=env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or None,
            role_arn=env.get("AWS_ROLE_ARN") or None,
            role_session_name=env.get("AWS_ROLE_SESSION_NAME") or None,
            sts_endpoint=env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL") or None,
            max_attempts=int(raw_attempts),
            connect_timeout_s=_env_seconds(env, "CCS_S3_CONNECT_TIMEOUT_SECONDS", 10.0),
            read_timeout_s=_env_seconds(env, "CCS_S3_READ_TIMEOUT_SECONDS", 60.0),
        )
        settings.host_and_tls()  # a malformed endpoint fails before anything is fetched
        if settings.web_identity_token_file and not settings.role_arn:
            raise LoaderError("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not")
        return settings

    @property
    def uses_web_identity(self) -> bool:
        return not self.access_key and bool(self.web_identity_token_file)

    def _web_identity_token(self) -> dict[str, str]:
        path = self.web_identity_token_file or ""
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise LoaderError(
                f"AWS_WEB_IDENTITY_TOKEN_FILE={path}: cannot read: {exc.strerror}"
            ) from None
        return {"access_token": token, "expires_in": "0"}

    def host_and_tls(self) -> tuple[str, bool]:
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
            raise LoaderError(
                f"S3 endpoint {self.endpoint!r} (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL): "
                "expected http(s)://host[:port] with no path"
            )
        return url.netloc, url.scheme == "https"

    def client(self) -> Minio:
        host, secure = self.host_and_tls()
        # No retries inside urllib3: S3Repository._retry is the one bounded retry loop.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.connect_timeout_s, read=self.read_timeout_s),
            retries=False,
            maxsize=4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=self.ca_bundle or certifi.where(),
        )
        provider = None
        if self.uses_web_identity:
            sts = self.sts_endpoint
            if not sts:
                sts = f"https://sts.{self.region}.amazonaws.com" if self.region else ""
                sts = sts or "https://sts.amazonaws.com"
            provider = WebIdentityProvider(
                jwt_provider_func=self._web_identity_token,
                sts_endpoint=sts,
                role_arn=self.role_arn,
                role_session_name=self.role_session_name or "ccs-model-loader",
                http_client=http,
            )
        return Minio(
            host,
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.session_token,
            secure=secure,
            region=self.region,
            http_client=http,
            credentials=provider,
        )


class _Truncated(Exception):
    """An object's body ended before its listed size: worth another attempt."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error):
        return exc.code in RETRYABLE_S3_CODES
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):  # e.g. a proxy's HTML 502/503 page
        status = int(getattr(exc, "_code", 0) or 0)
        return status >= 500 or status == 429
    return isinstance(exc, urllib3.exceptions.HTTPError | _Truncated | ConnectionError)


@dataclass(frozen=True)
class S3Object:
    key: str
    relative: tuple[str, ...]  # path parts under the prefix: (version, ..., file)
    size: int
    etag: str = ""


@dataclass
class S3Repository:
    """`s3://<bucket>/<prefix>`: list the version directories' objects, then download them."""

    repository: str
    bucket: str
    prefix: str  # "" or ending with "/"
    settings: S3Settings

    @classmethod
    def parse(cls, repository: str, settings: S3Settings) -> S3Repository:
        bucket, _, path = repository.removeprefix(S3_SCHEME).partition("/")
        if not bucket:
            raise LoaderError(f"--repository {repository!r}: s3:// needs a bucket name")
        path = path.strip("/")
        return cls(repository, bucket, f"{path}/" if path else "", settings)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.settings.endpoint}"

    def _fail(self, exc: BaseException, what: str, attempts: int) -> LoaderError:
        head = f"--repository {self.repository!r}"
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        key_id = self.settings.access_key
        if key_id:
            who = f"access key {key_id}"
        elif self.settings.uses_web_identity:
            who = f"role {self.settings.role_arn} (AWS_WEB_IDENTITY_TOKEN_FILE)"
        else:
            who = "anonymous requests (no AWS_ACCESS_KEY_ID)"
        if isinstance(exc, S3Error):
            code = exc.code
            if code == "NoSuchBucket":
                return LoaderError(
                    f"{head}: bucket {self.bucket!r} does not exist at {self.settings.endpoint}"
                )
            if code == "InvalidAccessKeyId":
                return LoaderError(
                    f"{head}: access denied: {self.settings.endpoint} does not know {who} "
                    "(AWS_ACCESS_KEY_ID)"
                )
            if code == "SignatureDoesNotMatch":
                return LoaderError(
                    f"{head}: access denied: the request signature does not match for {who}; "
                    "check AWS_SECRET_ACCESS_KEY (and AWS_REGION)"
                )
            if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
                return LoaderError(
                    f"{head}: access denied: the session token is not valid ({code}); "
                    "renew AWS_SESSION_TOKEN"
                )
            if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem"):
                return LoaderError(f"{head}: access denied for {who} ({what}): {exc.message}")
            if code in RETRYABLE_S3_CODES:
                return LoaderError(f"{head}: {what} failed {tries}: {code}: {exc.message}")
            return LoaderError(f"{head}: {what} failed: {code}: {exc.message}")
        if isinstance(exc, ServerError):
            return LoaderError(
                f"{head}: {what} failed {tries}: {self.settings.endpoint} answered "
                f"HTTP {exc.status_code}"
            )
        if isinstance(exc, InvalidResponseError):
            return LoaderError(
                f"{head}: {what} failed {tries}: {self.settings.endpoint} did not answer like "
                f"an S3 service (AWS_ENDPOINT_URL_S3?): {str(exc)[:300]}"
            )
        if isinstance(exc, _Truncated):
            return LoaderError(f"{head}: {what} failed {tries}: {exc}")
        return LoaderError(
            f"{head}: {what} failed {tries}: cannot reach {self.settings.endpoint} "
            f"(connect timeout {self.settings.connect_timeout_s:g} s, read timeout "
            f"{self.settings.read_timeout_s:g} s): {type(exc).__name__}: {exc}"
        )

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        settings = self.settings
        for attempt in range(1, settings.max_attempts + 1):
            try:
                return call()
            except ValueError as exc:  # minio's own checks: bucket or object name
                raise LoaderError(f"--repository {self.repository!r}: {exc}") from None
            except Exception as exc:
                if not _transient(exc) or attempt == settings.max_attempts:
                    raise self._fail(exc, what, attempt) from exc
                backoff = min(
                    settings.max_backoff_s, settings.initial_backoff_s * 2 ** (attempt - 1)
                )
                delay = random.uniform(backoff / 2, backoff)
                print(
                    f"ccs-model-loader: {what}: {type(exc).__name__}: {exc}; retrying in "
                    f"{delay:.1f} s (attempt {attempt} of {settings.max_attempts})",
                    file=sys.stderr,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def plan(self, client: Minio) -> list[S3Object]:
        """List the objects of the version directories; fail clearly if there are none."""
        listed = self._retry(
            f"listing {self.where}",
            lambda: list(client.list_objects(self.bucket, prefix=self.prefix, recursive=True)),
        )
        if not listed:
            raise LoaderError(
                f"--repository {self.repository!r}: no objects under {self.where} "
                "(empty or misspelled prefix)"
            )
        objects: list[S3Object] = []
        others: set[str] = set()
        for obj in listed:
            key = obj.object_name or ""
            parts = tuple(key.removeprefix(self.prefix).split("/"))
            if len(parts) < 2 or not parts[0].isdigit():
                others.add(parts[0] + ("/" if len(parts) > 1 else ""))
                continue
            inner = parts[:-1] if parts[-1] == "" else parts  # "1/" or "1/sub/": a folder
            if any(p in ("", ".", "..") for p in inner):
                raise LoaderError(
                    f"--repository {self.repository!r}: object key {key!r} is not a safe "
                    "relative path"
                )
            objects.append(S3Object(key, parts, int(obj.size or 0), str(obj.etag or "")))
        if not objects:
            found = ", ".join(sorted(others)[:10])
            raise LoaderError(
                f"--repository {self.repository!r}: no version directory (1/, 2/, ...) under "
                f"{self.where} (found: {found})"
            )
        return objects

    def _download(self, client: Minio, obj: S3Object, target: Path) -> None:
        response = client.get_object(self.bucket, obj.key)
        partial = target.with_name(target.name + ".part")
        try:
            written = 0
            with open(partial, "wb") as out:
                for chunk in response.stream(1024 * 1024):
                    out.write(chunk)
                    written += len(chunk)
        finally:
            response.close()
            response.release_conn()
        if written != obj.size:
            partial.unlink(missing_ok=True)
            raise _Truncated(f"{obj.key}: got {written} of {obj.size} bytes")
        os.replace(partial, target)

    def fetch(self, client: Minio, objects: list[S3Object], staging: Path) -> None:
        total = sum(o.size for o in objects)
        print(
            f"ccs-model-loader: downloading {len(objects)} objects ({total / 2**20:.1f} MiB) "
            f"from {self.where}"
        )
        for obj in objects:
            if obj.relative[-1] == "":
                staging.joinpath(*obj.relative[:-1]).mkdir(parents=True, exist_ok=True)
                continue
            target = staging.joinpath(*obj.relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._retry(
                f"GET s3://{self.bucket}/{obj.key}",
                functools.partial(self._download, client, obj, target),
            )


def parse_config(text: str, origin: str) -> pb.ModelConfig:
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise LoaderError(f"{origin}: not a valid Triton model config: {exc}") from None


def version_dirs(path: Path) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )


def validate(
    config: pb.ModelConfig,
    model_dir: Path,
    model_name: str,
    origin: str,
    repository: str | None = None,
) -> list[int]:
    """Check an assembled model directory; return its versions.

    Errors about the version directories name `--repository <repository>` where given (the
    user's spelling, not the staging directory), else `model_dir`."""
    where = f"--repository {repository!r}" if repository is not None else str(model_dir)
    if config.name and config.name != model_name:
        raise LoaderError(
            f"{origin}: name {config.name!r} does not match --model-name {model_name!r}"
        )
    if not config.platform and not config.backend:
        raise LoaderError(f"{origin}: neither platform nor backend is set")
    if not config.input or not config.output:
        raise LoaderError(f"{origin}: the model declares no input or no output")
    versions = [int(p.name) for p in version_dirs(model_dir)]
    if not versions:
        raise LoaderError(f"{where}: no version directory (1/, 2/, ...) in the repository")
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        missing = sorted(set(policy.specific.versions) - set(versions))
        if missing:
            raise LoaderError(
                f"{origin}: version_policy.specific.versions {missing} not found in "
                f"{where} (has {versions})"
            )
    wanted = config.default_model_filename
    if not wanted:
        if config.backend == "python":
            wanted = "model.py"
        else:
            wanted = DEFAULT_MODEL_FILENAMES.get(config.platform, "")
    if wanted:
        for version in versions:
            if not (model_dir / str(version) / wanted).exists():
                raise LoaderError(
                    f"{where}: version {version}: missing {wanted} "
                    f"(needed by {config.backend or config.platform})"
                )
    return versions


def assemble(
    repository: str,
    model_name: str,
    config_path: Path,
    model_store: Path,
    pvc_root: Path = PVC_MOUNT_ROOT,
    s3: S3Settings | None = None,
    cache: NodeCache | None = None,
    report: dict[str, object] | None = None,
) -> Path:
    """Build <model_store>/<model_name>; return that directory. Raises LoaderError.

    `s3` defaults to S3Settings.from_env() and is only read for s3:// repositories. With a
    node `cache`, an s3:// repository is taken from the node's cache entry for its exact
    objects (filled once per node, see modelcache.py); `report` receives what the cache did.
    """
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise LoaderError(f"--model-name {model_name!r}: not a valid model directory name")
    try:
        config_text = config_path.read_text()
    except OSError as exc:
        raise LoaderError(f"--config {config_path}: cannot read: {exc.strerror}") from None
    config = parse_config(config_text, f"--config {config_path}")
    populate: Callable[[Path], None]
    if repository.startswith(S3_SCHEME):
        remote = S3Repository.parse(repository, s3 or S3Settings.from_env())
        client = remote.settings.client()
        objects = remote.plan(client)  # listing errors leave the store untouched

        def populate(staging: Path) -> None:
            if cache is None:
                remote.fetch(client, objects, staging)
                return
            key = cache_key(
                repository,
                remote.settings.endpoint,
                (("/".join(o.relative), o.size, o.etag) for o in objects),
            )
            try:
                entry, outcome = cache.get(
                    key, lambda fill: remote.fetch(client, objects, fill)
                )
            except OSError as exc:
                raise LoaderError(
                    f"--cache-dir {cache.root}: {exc.strerror or exc} (the node's model cache "
                    "must be a writable directory)"
                ) from None
            print(
                f"ccs-model-loader: node cache {outcome.outcome} ({outcome.bytes / 2**20:.1f} MiB "
                f"in {outcome.seconds:.2f} s, entry {key})"
                + (f", evicted {len(outcome.evicted)} entries" if outcome.evicted else "")
            )
            if report is not None:
                report["cache"] = outcome.as_dict()
            link_tree(entry, staging)

    else:
        source = Source.resolve(repository, pvc_root)
        if not source.path.is_dir():
            raise LoaderError(
                f"--repository {repository!r}: {source.path} is not a directory (not mounted?)"
            )
        sources = version_dirs(source.path)
        if not sources:
            raise LoaderError(
                f"--repository {repository!r}: no version directory (1/, 2/, ...) in {source.path}"
            )

        def populate(staging: Path) -> None:
            for version in sources:
                target = staging / version.name
                if source.link:
                    target.symlink_to(version.resolve(), target_is_directory=True)
                else:
                    shutil.copytree(version, target, symlinks=False)

    model_store.mkdir(parents=True, exist_ok=True)
    model_dir = model_store / model_name
    staging = model_store / f".{model_name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        populate(staging)
        (staging / "config.pbtxt").write_text(config_text)
        validate(config, staging, model_name, f"--config {config_path}", repository)
    except BaseException:
        # Triton would take a leftover directory in its repository for a model.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Replace any previous assembly only once the new one is complete and valid.
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(staging, model_dir)
    return model_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccs-model-loader",
        description="Assemble the Triton model repository of a ClaudeCodeService pod.",
    )
    parser.add_argument("--repository", required=True, help="spec.model.repository")
    parser.add_argument("--model-name", required=True, help="spec.model.name")
    parser.add_argument("--config", required=True, type=Path, help="config.pbtxt to serve")
    parser.add_argument("--model-store", required=True, type=Path, help="Triton's repository")
    parser.add_argument("--pvc-root", type=Path, default=PVC_MOUNT_ROOT, help=argparse.SUPPRESS)
    parser.add_argument(
        "--cache-dir", type=Path, help="the node's model cache (spec.model.cache), s3:// only"
    )
    parser.add_argument(
        "--cache-limit-bytes", type=int, default=0, help="evict entries above this many bytes"
    )
    parser.add_argument(
        "--report",
        type=Path,
        help="write a JSON summary here (the pod's termination message, which the operator reads)",
    )
    return parser


def termination_message(report: dict[str, object], started: float) -> str:
    """The loader's summary as its container's termination message, which the operator reads
    (coldstart.REPORT_KEY): what `assemble` reported, and the seconds since `started`
    (time.monotonic())."""
    summary = {**report, "seconds": round(time.monotonic() - started, 3)}
    return json.dumps({"ccsModelLoader": summary}, sort_keys=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cache = None
    if args.cache_dir is not None:
        if args.cache_limit_bytes <= 0:
            parser.error("--cache-limit-bytes: a positive size is needed with --cache-dir")
        cache = NodeCache(args.cache_dir, args.cache_limit_bytes)
    report: dict[str, object] = {}
    start = time.monotonic()
    try:
        model_dir = assemble(
            args.repository,
            args.model_name,
            args.config,
            args.model_store,
            args.pvc_root,
            cache=cache,
            report=report,
        )
    except LoaderError as exc:
        print(f"ccs-model-loader: error: {exc}", file=sys.stderr)
        return 2
    message = termination_message(report, start)
    if args.report is not None:
        with contextlib.suppress(OSError):  # a summary is never worth failing the pod for
            args.report.write_text(message)
    versions = ", ".join(p.name for p in version_dirs(model_dir))
    print(f"ccs-model-loader: {model_dir} ready (versions {versions}) from {args.repository}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
