"""A real RFC 3161 timestamping authority on 127.0.0.1 for the tests: a root certificate and a TSA
certificate (extendedKeyUsage timeStamping, critical) made with `cryptography`, tokens issued by
pyhanko's `DummyTimeStamper` (real signed TimeStampResp, RSA), served over HTTP as a TSA is
(`application/timestamp-query` in, `application/timestamp-reply` out). It can be told to
misbehave the ways a verifier must catch: answer with another nonce, or for another hash."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from asn1crypto import keys as asn1_keys
from asn1crypto import tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.sign.timestamps import DummyTimeStamper

GOOD, OTHER_NONCE, OTHER_HASH = "good", "other-nonce", "other-hash"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "backbone tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
               .not_valid_after(now + timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


class LocalTsa:
    """A TSA with its own root, served on a free port of 127.0.0.1 until `stop()`; `start()` again
    serves on the same port (a TSA that was down and is back)."""

    def __init__(self, directory: Path, name: str = "test") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.root = _certificate(f"{name} root", root_key, f"{name} root", root_key, ca=True)
        self.certificate = _certificate(f"{name} TSA", tsa_key, f"{name} root", root_key, ca=False)
        self.root_file = directory / f"{name}-root.pem"
        self.root_file.write_bytes(_pem(self.root))
        self.chain_file = directory / f"{name}-chain.pem"  # the TSA's certificate and its root
        self.chain_file.write_bytes(_pem(self.certificate, self.root))
        der_key = tsa_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        self.stamper = DummyTimeStamper(asn1_x509.Certificate.load(self.certificate.public_bytes(serialization.Encoding.DER)),
                                        asn1_keys.PrivateKeyInfo.load(der_key))
        self.mode = GOOD
        self.requests = 0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tsa"

    def respond(self, query: bytes) -> bytes:
        """The DER TimeStampResp to a DER TimeStampReq, as this TSA's mode makes it."""
        request = tsp.TimeStampReq.load(query)
        if self.mode == OTHER_NONCE:
            request = tsp.TimeStampReq({**{k: request[k] for k in ("version", "message_imprint", "cert_req")},
                                        "nonce": (request["nonce"].native or 0) + 1})
        elif self.mode == OTHER_HASH:
            imprint = request["message_imprint"]
            other = tsp.MessageImprint({"hash_algorithm": imprint["hash_algorithm"],
                                        "hashed_message": hashlib.sha256(b"something else").digest()})
            request = tsp.TimeStampReq({"version": request["version"], "message_imprint": other, "nonce": request["nonce"],
                                        "cert_req": request["cert_req"]})
        return self.stamper.request_tsa_response(request).dump()

    def start(self) -> LocalTsa:
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                query = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                tsa.requests += 1
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    self.send_response(415)
                    self.end_headers()
                    return
                body = tsa.respond(query)
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="local-tsa", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
