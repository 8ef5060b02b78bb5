"""TLS certificates for the deployment's Kafka brokers (docs/deployment.md, "Credentials").

The compose deployment's ``certs-init`` service runs ``python -m lambdarec.certs issue``: a private
certificate authority and one broker certificate whose names cover every broker host, as PEM files
Kafka reads directly (``ssl.keystore.type=PEM``): ``broker.pem`` (the broker's unencrypted PKCS#8
key, its certificate and the CA's, for the brokers only) and ``ca.pem`` (the CA certificate the
clients trust). A later run keeps valid files and only re-issues when a host is missing or the
certificate expires within 30 days. A deployment with its own PKI mounts its files instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography.x509 import Certificate

CA_FILE = "ca.pem"
BROKER_FILE = "broker.pem"
VALID_DAYS = 825
RENEW_DAYS = 30


@dataclass(frozen=True)
class Issued:
    ca: Path
    broker: Path
    renewed: bool


def _name(common_name: str) -> object:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: Sequence[str]) -> list[object]:
    from cryptography import x509

    names: list[object] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _covers(cert: Certificate, hosts: Sequence[str], now: dt.datetime) -> bool:
    from cryptography import x509

    if cert.not_valid_after_utc - now < dt.timedelta(days=RENEW_DAYS):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return set(hosts) <= present


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def issue(
    out: Path, hosts: Sequence[str], *, owner: tuple[int, int] | None = None, days: int = VALID_DAYS
) -> Issued:
    """Write ``ca.pem`` and ``broker.pem`` under ``out`` for ``hosts`` (names or IP addresses),
    unless valid ones already cover them. ``owner`` (uid, gid) gets ``broker.pem`` (mode 600),
    e.g. the Kafka image's user when this runs as root."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not hosts or any(not h or "," in h or h != h.strip() for h in hosts):
        raise ValueError(f"hosts must be non-empty names without spaces or commas: {list(hosts)}")
    out.mkdir(parents=True, exist_ok=True)
    ca_path, broker_path = out / CA_FILE, out / BROKER_FILE
    now = dt.datetime.now(dt.UTC)
    if ca_path.is_file() and broker_path.is_file():
        try:
            current = x509.load_pem_x509_certificates(broker_path.read_bytes())[0]
        except ValueError:
            current = None
        if current is not None and _covers(current, hosts, now):
            return Issued(ca_path, broker_path, renewed=False)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("lambdarec Kafka CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)  # type: ignore[arg-type]
        .issuer_name(ca_name)  # type: ignore[arg-type]
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))  # type: ignore[arg-type]
        .issuer_name(ca_name)  # type: ignore[arg-type]
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(broker_path, key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem), 0o600)
    if owner is not None:
        os.chown(broker_path, *owner)
    _write(ca_path, ca_cert.public_bytes(pem), 0o644)
    return Issued(ca_path, broker_path, renewed=True)


def _owner(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not (uid.isdigit() and (not sep or gid.isdigit())):
        raise argparse.ArgumentTypeError(f"--owner takes UID[:GID] numbers, got {text!r}")
    return int(uid), int(gid or uid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambdarec.certs", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("issue", help="Write ca.pem and broker.pem (kept while still valid).")
    run.add_argument("--out", type=Path, required=True, help="folder of the two PEM files")
    run.add_argument(
        "--hosts", required=True, help="comma-separated broker names and addresses (the SAN)"
    )
    run.add_argument("--owner", type=_owner, help="UID[:GID] to own broker.pem (mode 600)")
    run.add_argument(
        "--ca-copy",
        type=Path,
        action="append",
        default=[],
        help="also copy ca.pem here (e.g. the state volume every client mounts); repeatable",
    )
    args = parser.parse_args(argv)
    try:
        issued = issue(args.out, [h.strip() for h in args.hosts.split(",")], owner=args.owner)
        for copy in args.ca_copy:
            copy.parent.mkdir(parents=True, exist_ok=True)
            _write(copy, issued.ca.read_bytes(), 0o644)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    state = "issued" if issued.renewed else "kept (valid, covering every host)"
    print(f"kafka certificates {state}: {issued.broker}, {issued.ca}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
