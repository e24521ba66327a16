"""TLS for the API: the one place that builds SSL contexts (the coordinator's server context,
the CLI's client context) and the one place that issues certificates (``ffrtmp up --tls``).
TLS 1.2 or newer only; on TLS 1.2 only ECDHE key exchange with AEAD ciphers
(TLS 1.3 suites are all modern). With a client CA, a client without a certificate that CA
signed is refused at the handshake."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message names which."""


def _load(what: str, fn: object, *args: str | None) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except FileNotFoundError as exc:
        raise TlsError(f"{what}: no such file: {exc.filename}") from None
    except PermissionError as exc:
        raise TlsError(f"{what}: cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsError(f"{what}: {getattr(exc, 'reason', None) or exc}") from None


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


@dataclass(frozen=True)
class ServerTls:
    cert: str
    key: str
    client_ca: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        self.reload(ctx)
        if self.client_ca:
            _load("--tls-client-ca", ctx.load_verify_locations, self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def reload(self, ctx: ssl.SSLContext) -> None:
        """(Re)load the certificate and key: new handshakes use them (rotation on SIGHUP)."""
        _load("--tls-cert/--tls-key", ctx.load_cert_chain, self.cert, self.key)


def server_tls(cert: str | None, key: str | None, client_ca: str | None) -> ServerTls | None:
    """Check the coordinator's TLS options go together; None when TLS is off."""
    if not cert and not key:
        if client_ca:
            raise TlsError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not cert or not key:
        raise TlsError("--tls-cert and --tls-key go together")
    tls = ServerTls(cert, key, client_ca)
    tls.context()  # fail at start, not at the first handshake
    return tls


def client_context(
    ca_cert: str | None, client_cert: str | None, client_key: str | None
) -> ssl.SSLContext | None:
    """The CLI's context for an https:// coordinator; None means the system default (no CA
    given, no client certificate)."""
    if client_key and not client_cert:
        raise TlsError("--client-key needs --client-cert")
    if not (ca_cert or client_cert):
        return None
    ctx = _harden(ssl.create_default_context())
    if ca_cert:
        _load("--ca-cert", ctx.load_verify_locations, ca_cert)
    if client_cert:
        _load("--client-cert/--client-key", ctx.load_cert_chain, client_cert, client_key)
    return ctx


# --- issuing certificates (cryptography) ------------------------------------------------
@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _names(hosts: list[str]) -> list[object]:
    from cryptography import x509

    out: list[object] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def issue(
    directory: Path,
    name: str,
    hosts: list[str],
    ca: Issued | None = None,
    *,
    is_ca: bool = False,
    client: bool = False,
    days: int = 825,
) -> Issued:
    """Write ``<name>.crt`` and ``<name>.key`` (0600) into ``directory``: a CA (``is_ca``), or a
    server (``hosts`` as subject alternative names) or client certificate signed by ``ca``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if ca is None:
        issuer, signer = subject, key
    else:
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        issuer = ca_cert.subject
        signer = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)  # type: ignore[assignment]
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
    )
    if is_ca:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if hosts:
            b = b.add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)  # type: ignore[arg-type]
    cert = b.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    out = Issued(directory / f"{name}.crt", directory / f"{name}.key")
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        out.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return out


@dataclass(frozen=True)
class LocalPki:
    ca: Issued
    server: Issued
    client: Issued


def local_pki(directory: Path, hosts: list[str] | None = None) -> LocalPki:
    """A CA, a server certificate for localhost and a client certificate: what ``ffrtmp up
    --tls`` serves with. Kept across runs (reissued when a file is missing)."""
    hosts = hosts or ["localhost", "127.0.0.1", "::1"]
    kept = [Issued(directory / f"{n}.crt", directory / f"{n}.key") for n in ("ca", "server", "client")]
    if all(i.cert.exists() and i.key.exists() for i in kept):
        return LocalPki(*kept)
    ca = issue(directory, "ca", [], is_ca=True, days=3650)
    server = issue(directory, "server", hosts, ca)
    return LocalPki(ca, server, issue(directory, "client", [], ca, client=True))
