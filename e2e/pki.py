"""Certificates and keys for the local control plane, made with `cryptography`.

One cluster CA signs the API server's serving certificate and every client certificate; a
separate front-proxy CA lets aggregated APIs (a metrics adapter, later) trust the API server.
Kubernetes reads identity from the certificate: CN is the user, O the groups.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)  # a test cluster outlives no CI run, but may a laptop

# client name -> (CN user, O groups); the bootstrap RBAC policy binds these identities.
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("kubernetes-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    # kwok writes node and pod status for every fake node; an admin identity keeps it simple.
    "kwok": ("kwok-controller", ("system:masters",)),
}


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + _VALIDITY)
    )


def _load(pair: Pair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def ensure_ca(directory: Path, name: str, common_name: str) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def ensure_leaf(
    directory: Path,
    name: str,
    ca: Pair,
    common_name: str,
    orgs: tuple[str, ...] = (),
    *,
    server: bool = False,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    ca_cert, ca_key = _load(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(common_name, orgs), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def ensure_service_account_keys(directory: Path) -> Pair:
    """RSA pair the controller-manager signs service-account tokens with (RS256)."""
    pair = Pair(directory / "sa.pub", directory / "sa.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pair.key, key)
    pair.cert.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pair


@dataclass(frozen=True)
class ClusterPKI:
    ca: Pair
    front_proxy_ca: Pair
    apiserver: Pair
    front_proxy_client: Pair
    service_account: Pair
    clients: dict[str, Pair]


# The in-cluster names of the API server; kubeconfigs use 127.0.0.1.
_APISERVER_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR is the `kubernetes` Service


def ensure_pki(directory: Path) -> ClusterPKI:
    """Create what is missing; existing material is reused so kubeconfigs stay valid."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ensure_ca(directory, "ca", "ccs-e2e-ca")
    front_proxy_ca = ensure_ca(directory, "front-proxy-ca", "ccs-e2e-front-proxy-ca")
    apiserver = ensure_leaf(
        directory,
        "apiserver",
        ca,
        "kube-apiserver",
        server=True,
        dns_names=_APISERVER_DNS,
        ips=("127.0.0.1", SERVICE_IP),
    )
    front_proxy_client = ensure_leaf(
        directory, "front-proxy-client", front_proxy_ca, "front-proxy-client"
    )
    clients = {
        name: ensure_leaf(directory, f"client-{name}", ca, cn, orgs)
        for name, (cn, orgs) in CLIENTS.items()
    }
    return ClusterPKI(
        ca=ca,
        front_proxy_ca=front_proxy_ca,
        apiserver=apiserver,
        front_proxy_client=front_proxy_client,
        service_account=ensure_service_account_keys(directory),
        clients=clients,
    )
