"""The Kafka brokers' certificates (python -m lambdarec.certs): a CA and a broker certificate
whose names cover every broker, written as PEM with the key private, kept while valid."""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lambdarec.certs import issue, main

if TYPE_CHECKING:
    from pathlib import Path


def _san(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    return names | {str(v) for v in san.get_values_for_type(x509.IPAddress)}


def test_issue_writes_a_ca_and_a_broker_chain(tmp_path: Path) -> None:
    issued = issue(tmp_path, ["kafka", "kafka-2", "127.0.0.1"])
    assert issued.renewed
    assert issued.broker.stat().st_mode & 0o777 == 0o600
    assert issued.ca.stat().st_mode & 0o777 == 0o644
    pem = issued.broker.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)  # unencrypted PKCS#8
    assert b"BEGIN PRIVATE KEY" in pem
    leaf, ca_in_chain = x509.load_pem_x509_certificates(pem)
    ca = x509.load_pem_x509_certificate(issued.ca.read_bytes())
    assert ca_in_chain == ca
    assert _san(leaf) == {"kafka", "kafka-2", "127.0.0.1"}
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" not in issued.ca.read_bytes()
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=800)


def test_valid_files_are_kept_and_a_new_host_reissues(tmp_path: Path) -> None:
    first = issue(tmp_path, ["kafka", "kafka-2"])
    before = first.broker.read_bytes()
    again = issue(tmp_path, ["kafka"])  # a subset: still covered
    assert not again.renewed
    assert again.broker.read_bytes() == before
    grown = issue(tmp_path, ["kafka", "kafka-2", "kafka-3"])
    assert grown.renewed
    assert "kafka-3" in _san(x509.load_pem_x509_certificates(grown.broker.read_bytes())[0])


def test_a_certificate_near_its_end_is_renewed(tmp_path: Path) -> None:
    issue(tmp_path, ["kafka"], days=10)
    assert issue(tmp_path, ["kafka"]).renewed


def test_cli_copies_the_ca_and_refuses_bad_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "state" / "certs" / "kafka-ca.pem"
    out = tmp_path / "certs"
    args = ["issue", f"--out={out}", "--hosts=kafka,kafka-2", f"--ca-copy={copy}"]
    assert main(args) == 0
    assert copy.read_bytes() == (out / "ca.pem").read_bytes()
    assert "issued" in capsys.readouterr().out
    assert main(args) == 0
    assert "kept" in capsys.readouterr().out
    assert main(["issue", f"--out={out}", "--hosts=kafka,"]) == 1
    assert capsys.readouterr().err.startswith("error: hosts must be non-empty names")


def test_owner_gets_the_broker_key(tmp_path: Path) -> None:
    issued = issue(tmp_path, ["kafka"], owner=(os.getuid(), os.getgid()))
    stat = issued.broker.stat()
    assert (stat.st_uid, stat.st_gid) == (os.getuid(), os.getgid())
    with pytest.raises(SystemExit) as exit_:  # argparse: one line naming the option
        main(["issue", f"--out={tmp_path}", "--hosts=kafka", "--owner=x:1"])
    assert exit_.value.code == 2
