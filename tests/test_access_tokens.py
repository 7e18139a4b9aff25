# mypy: disable-error-code="misc"
"""Access tokens: what `verify_access_token` accepts, and the long list of what it must not.

Forged tokens that need a valid signature are signed with *our* real key and carry the jti
of a real, live IssuedToken row, so each rejection is caused by the one thing that is wrong
with the token and not by a bad signature or an unknown jti. Positive controls check that
the forging helpers themselves produce tokens that would pass when nothing is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import jwt
import pytest
import time_machine
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.test import Client, override_settings

from controlplane.accesstokens import (
    MAX_TOKEN_LENGTH,
    REQUIRED_CLAIMS,
    REVOKED_KEY,
    Principal,
    TokenRejected,
    jwks,
    reset_key_cache,
    verify_access_token,
)
from controlplane.models import ALL_SCOPES, EndUser, IssuedToken
from controlplane.redis_client import get_redis
from controlplane.services.platforms import set_platform_active
from controlplane.services.tokens import MintedToken, issue_token, revoke_token_by_jti
from controlplane.services.users import delete_end_user, set_end_user_active
from tests.conftest import OPERATOR, PlatformCreds, UserCreds, make_user

JWKS_PATH = "/.well-known/jwks.json"
READ = frozenset({"read"})
FOREIGN_URL = "https://evil.example"
HEADER_FETCH_URL = "http://127.0.0.1:9/keys"


# ---- helpers -----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def our_kid() -> str:
    return settings.TRADEPLANE_JWT_KEYS[0][0]


def our_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(settings.TRADEPLANE_JWT_KEYS[0][1])


def leeway() -> int:
    return settings.TRADEPLANE_TOKEN_LEEWAY_SECONDS


def ttl() -> int:
    return settings.TRADEPLANE_TOKEN_TTL_SECONDS


def mint(creds: UserCreds, scopes: frozenset[str] = READ) -> MintedToken:
    return issue_token(creds.platform.platform, creds.user, scopes, actor=OPERATOR)


def unverified_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def sign_segments(header_segment: str, payload_segment: str, key: Any = None) -> str:
    """A compact JWS over exactly these two segments, signed with an Ed25519 key."""
    signing_input = f"{header_segment}.{payload_segment}".encode()
    signature = (key or our_key()).sign(signing_input)
    return f"{header_segment}.{payload_segment}.{b64url(signature)}"


def sign_bytes(header: bytes, payload: bytes, key: Any = None) -> str:
    return sign_segments(b64url(header), b64url(payload), key)


def good_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "EdDSA", "kid": our_kid(), "typ": "at+jwt"}
    for name, value in changes.items():
        if value is DROP:
            header.pop(name, None)
        else:
            header[name] = value
    return header


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()


@cache
def attacker_ed25519() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@cache
def attacker_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def attacker_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def attacker_jwk() -> dict[str, str]:
    raw = attacker_ed25519().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


@cache
def attacker_certificate_der() -> bytes:
    key = attacker_ed25519()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tradeplane.example")])
    now = datetime.now(tz=UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, None)
    )
    return certificate.public_bytes(Encoding.DER)


def our_public_raw() -> bytes:
    return our_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def our_public_pem() -> bytes:
    return our_key().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def our_public_jwk_json() -> bytes:
    return json.dumps(jwks()["keys"][0]).encode()


def served_jwks_document() -> bytes:
    return Client().get(JWKS_PATH).content


@dataclass
class Forge:
    """A real, live token for alice (scope "read"), and ways to make variations of it."""

    token: str
    jti: str
    claims: dict[str, Any]

    @property
    def now(self) -> int:
        return int(self.claims["iat"])

    @property
    def segments(self) -> list[str]:
        return self.token.split(".")

    def claims_with(self, **changes: Any) -> dict[str, Any]:
        claims = dict(self.claims)
        for name, value in changes.items():
            if value is DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(
        self, claims: dict[str, Any] | None = None, header: dict[str, Any] | None = None
    ) -> str:
        """Signed with OUR real key: only what was changed can make it unacceptable."""
        return sign_bytes(json_bytes(header or good_header()), json_bytes(claims or self.claims))

    def sign_claims(self, **changes: Any) -> str:
        return self.sign(self.claims_with(**changes))

    def sign_header(self, **changes: Any) -> str:
        return self.sign(header=good_header(**changes))

    def attacker_signed(self, header: dict[str, Any]) -> str:
        return sign_bytes(json_bytes(header), json_bytes(self.claims), attacker_ed25519())

    def unsigned(self, alg: str, signature: str) -> str:
        header = json_bytes(good_header(alg=alg))
        return f"{b64url(header)}.{b64url(json_bytes(self.claims))}.{signature}"

    def hmac_signed(self, alg: str, secret: bytes) -> str:
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        header_segment = b64url(json_bytes(good_header(alg=alg)))
        payload_segment = b64url(json_bytes(self.claims))
        signing_input = f"{header_segment}.{payload_segment}".encode()
        signature = hmac.new(secret, signing_input, digest).digest()
        return f"{header_segment}.{payload_segment}.{b64url(signature)}"

    def with_payload_keeping_signature(self, **changes: Any) -> str:
        header_segment, _, signature = self.segments
        return f"{header_segment}.{b64url(json_bytes(self.claims_with(**changes)))}.{signature}"

    def with_signature(self, signature: bytes) -> str:
        header_segment, payload_segment, _ = self.segments
        return f"{header_segment}.{payload_segment}.{b64url(signature)}"

    def signature_bytes(self) -> bytes:
        return b64url_decode(self.segments[2])


@pytest.fixture
def forge(alice: UserCreds) -> Forge:
    minted = mint(alice, READ)
    return Forge(minted.access_token, minted.jti, unverified_claims(minted.access_token))


@contextmanager
def keyring(keys: list[tuple[str, bytes]]) -> Iterator[None]:
    with override_settings(TRADEPLANE_JWT_KEYS=keys):
        reset_key_cache()
        try:
            yield
        finally:
            reset_key_cache()
    reset_key_cache()


def assert_rejected(token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        verify_access_token(token)
    assert isinstance(caught.value.reason, str)
    assert caught.value.reason
    return caught.value


# ---- the forged and malformed corpus -----------------------------------------------------

Builder = Callable[[Forge], str]


def _flip_one_bit(f: Forge) -> str:
    signature = bytearray(f.signature_bytes())
    signature[17] ^= 0x04
    return f.with_signature(bytes(signature))


def _duplicate_claim(f: Forge, name: str, first_value: Any) -> str:
    # The genuine value comes last, so a lenient "last one wins" parser would accept it.
    genuine = json_bytes(f.claims).decode()
    text = "{" + json.dumps(name) + ":" + json.dumps(first_value) + "," + genuine[1:]
    return sign_bytes(json_bytes(good_header()), text.encode())


def _duplicate_header_field(f: Forge, name: str, first_value: Any) -> str:
    genuine = json_bytes(good_header()).decode()
    text = "{" + json.dumps(name) + ":" + json.dumps(first_value) + "," + genuine[1:]
    return sign_bytes(text.encode(), json_bytes(f.claims))


def _non_utf8_payload(f: Forge) -> str:
    marker = "NON-UTF8-MARKER"
    payload = json_bytes(f.claims_with(sub=marker)).replace(marker.encode(), b"alice\xff\xfe")
    return sign_bytes(json_bytes(good_header()), payload)


def _json_serialized(f: Forge, general: bool) -> str:
    header_segment, payload_segment, signature = f.segments
    if general:
        body: dict[str, Any] = {
            "payload": payload_segment,
            "signatures": [{"protected": header_segment, "signature": signature}],
        }
    else:
        body = {"payload": payload_segment, "protected": header_segment, "signature": signature}
    return json.dumps(body)


def _non_canonical_base64(segment: str) -> str:
    """Same bytes, different text: flip an unused low bit of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3), "only segments with spare bits can be re-spelled"
    last = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[last ^ 1]


def _non_canonical_payload(f: Forge) -> str:
    # An extra claim (allowed) pads the payload until its segment has spare bits; the
    # canonical form is signed and the re-spelled one presented.
    claims = f.claims
    for length in range(4):
        claims = f.claims_with(pad="x" * length)
        if len(b64url(json_bytes(claims))) % 4 in (2, 3):
            break
    header_segment, payload_segment, signature = f.sign(claims).split(".")
    return f"{header_segment}.{_non_canonical_base64(payload_segment)}.{signature}"


def _deeply_nested_header(f: Forge) -> str:
    depth = 1_300
    token = sign_bytes(b"[" * depth + b"]" * depth, json_bytes(f.claims))
    assert len(token) <= MAX_TOKEN_LENGTH, "must reach the parser, not the length check"
    return token


def _deeply_nested_payload(f: Forge) -> str:
    # Parsed before the signature is checked, so an attacker's key is enough to get here.
    depth = 1_200
    payload = json_bytes(f.claims)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    token = sign_bytes(json_bytes(good_header()), payload, attacker_ed25519())
    assert len(token) <= MAX_TOKEN_LENGTH, "must reach the parser, not the length check"
    return token


def _huge_signed_token(f: Forge) -> str:
    return f.sign(f.claims_with(padding="A" * (1024 * 1024)))


def _corpus() -> list[tuple[str, Builder]]:
    corpus: list[tuple[str, Builder]] = []

    def add(name: str, builder: Builder) -> None:
        corpus.append((name, builder))

    # -- "alg": "none" in its spellings, with no signature and with a garbage one
    for alg in ("none", "None", "NONE", "nOnE"):
        add(f"alg-{alg}-empty-signature", lambda f, alg=alg: f.unsigned(alg, ""))
        add(
            f"alg-{alg}-garbage-signature",
            lambda f, alg=alg: f.unsigned(alg, b64url(b"garbage-signature")),
        )
    add("alg-missing", lambda f: f.sign_header(alg=DROP))
    add("alg-empty", lambda f: f.sign_header(alg=""))
    add("alg-null", lambda f: f.sign_header(alg=None))
    add("alg-list", lambda f: f.sign_header(alg=["EdDSA"]))
    add("alg-eddsa-lowercase-signed-by-us", lambda f: f.sign_header(alg="eddsa"))
    add("alg-Ed25519-signed-by-us", lambda f: f.sign_header(alg="Ed25519"))

    # -- key confusion: HMAC keyed with our public key, in every form it is published
    secrets_by_form: dict[str, Callable[[], bytes]] = {
        "raw-public-key": our_public_raw,
        "pem-public-key": our_public_pem,
        "jwk-json": our_public_jwk_json,
        "served-jwks-document": served_jwks_document,
    }
    for alg in ("HS256", "HS384", "HS512"):
        for form, secret in secrets_by_form.items():
            add(
                f"{alg}-keyed-with-{form}",
                lambda f, alg=alg, secret=secret: f.hmac_signed(alg, secret()),
            )

    # -- other algorithms with an attacker's key and our kid
    add(
        "ES256-attacker-key-our-kid",
        lambda f: jwt.encode(
            f.claims, attacker_ec(), algorithm="ES256", headers={"kid": our_kid(), "typ": "at+jwt"}
        ),
    )
    add(
        "RS256-attacker-key-our-kid",
        lambda f: jwt.encode(
            f.claims, attacker_rsa(), algorithm="RS256", headers={"kid": our_kid(), "typ": "at+jwt"}
        ),
    )
    add("EdDSA-attacker-key-our-kid", lambda f: f.attacker_signed(good_header()))

    # -- keys or key locations offered in the header
    add("jwk-header-attacker-key", lambda f: f.attacker_signed(good_header(jwk=attacker_jwk())))
    add(
        "jwk-header-attacker-key-no-kid",
        lambda f: f.attacker_signed(good_header(kid=DROP, jwk=attacker_jwk())),
    )
    add("jwk-header-signed-by-us", lambda f: f.sign_header(jwk=attacker_jwk()))
    for field in ("jku", "x5u"):
        add(
            f"{field}-header-attacker-key",
            lambda f, field=field: f.attacker_signed(good_header(**{field: HEADER_FETCH_URL})),
        )
        add(
            f"{field}-header-attacker-key-no-kid",
            lambda f, field=field: f.attacker_signed(
                good_header(kid=DROP, **{field: HEADER_FETCH_URL})
            ),
        )
        add(
            f"{field}-header-signed-by-us",
            lambda f, field=field: f.sign_header(**{field: HEADER_FETCH_URL}),
        )
    add(
        "x5c-header-attacker-certificate",
        lambda f: f.attacker_signed(
            good_header(x5c=[base64.b64encode(attacker_certificate_der()).decode()])
        ),
    )
    add(
        "x5c-header-signed-by-us",
        lambda f: f.sign_header(x5c=[base64.b64encode(attacker_certificate_der()).decode()]),
    )
    add("x5t-header-signed-by-us", lambda f: f.sign_header(x5t=b64url(b"thumbprint")))
    add("crit-header-signed-by-us", lambda f: f.sign_header(crit=["exp"]))
    add("b64-false-header-signed-by-us", lambda f: f.sign_header(b64=False, crit=["b64"]))
    add("cty-jwt-nested-signed-by-us", lambda f: f.sign_header(cty="JWT"))

    # -- kid: only a selector among our own keys
    add("kid-unknown", lambda f: f.sign_header(kid="no-such-key"))
    add("kid-empty", lambda f: f.sign_header(kid=""))
    add("kid-path-traversal", lambda f: f.sign_header(kid="../../dev/null"))
    add("kid-sql-injection", lambda f: f.sign_header(kid="' OR 1=1 --"))
    add("kid-10kB", lambda f: f.sign_header(kid="k" * 10_240))
    add("kid-1kB-under-length-limit", lambda f: f.sign_header(kid="k" * 1_024))
    add("kid-integer", lambda f: f.sign_header(kid=12345))
    add("kid-null", lambda f: f.sign_header(kid=None))
    add("kid-list-of-ours", lambda f: f.sign_header(kid=[our_kid()]))
    add("kid-missing", lambda f: f.sign_header(kid=DROP))
    add("kid-ours-case-swapped", lambda f: f.sign_header(kid=our_kid().swapcase()))

    # -- the signature itself
    add("signature-stripped", lambda f: ".".join(f.segments[:2]) + ".")
    add("signature-and-dot-stripped", lambda f: ".".join(f.segments[:2]))
    add("signature-truncated", lambda f: f.token[:-4])
    add("signature-truncated-to-63-bytes", lambda f: f.with_signature(f.signature_bytes()[:63]))
    add("signature-one-bit-flipped", _flip_one_bit)
    add("signature-all-zero", lambda f: f.with_signature(bytes(64)))
    add("signature-doubled", lambda f: f.with_signature(f.signature_bytes() * 2))
    add(
        "signature-non-canonical-base64",
        lambda f: ".".join([*f.segments[:2], _non_canonical_base64(f.segments[2])]),
    )
    add("payload-non-canonical-base64", _non_canonical_payload)

    # -- payload edited, old signature kept
    add(
        "payload-scope-upgraded-old-signature",
        lambda f: f.with_payload_keeping_signature(scope="read trade"),
    )
    add("payload-sub-changed-old-signature", lambda f: f.with_payload_keeping_signature(sub="bob"))
    add(
        "payload-exp-extended-old-signature",
        lambda f: f.with_payload_keeping_signature(exp=f.claims["exp"] + 86_400),
    )
    add(
        "header-typ-changed-old-signature",
        lambda f: ".".join([b64url(json_bytes(good_header(typ="JWT"))), *f.segments[1:]]),
    )

    # -- time claims, signed by us
    add(
        "exp-past-by-leeway-plus-1s",
        lambda f: f.sign_claims(
            iat=f.now - ttl() - leeway() - 1,
            nbf=f.now - ttl() - leeway() - 1,
            exp=f.now - leeway() - 1,
        ),
    )
    add(
        "exp-past-by-a-day",
        lambda f: f.sign_claims(
            iat=f.now - 86_400 - ttl(), nbf=f.now - 86_400 - ttl(), exp=f.now - 86_400
        ),
    )
    add("nbf-future-beyond-leeway", lambda f: f.sign_claims(nbf=f.now + leeway() + 30))
    add("iat-far-future", lambda f: f.sign_claims(iat=f.now + 86_400))
    add(
        "lifetime-longer-than-ttl",
        lambda f: f.sign_claims(exp=f.now + ttl() + 3_600),
    )
    add("exp-float", lambda f: f.sign_claims(exp=f.claims["exp"] + 0.5))
    add("exp-string", lambda f: f.sign_claims(exp=str(f.claims["exp"])))
    add("exp-boolean", lambda f: f.sign_claims(exp=True))
    add("iat-boolean", lambda f: f.sign_claims(iat=True))
    add("nbf-string", lambda f: f.sign_claims(nbf=str(f.claims["nbf"])))
    add("exp-huge", lambda f: f.sign_claims(exp=10**30))
    add("exp-null", lambda f: f.sign_claims(exp=None))
    add("exp-infinity", lambda f: f.sign_claims(exp=float("inf")))
    add("nbf-minus-infinity", lambda f: f.sign_claims(nbf=float("-inf")))
    add("iat-nan", lambda f: f.sign_claims(iat=float("nan")))

    # -- audience
    add("aud-foreign", lambda f: f.sign_claims(aud=f"{FOREIGN_URL}/mcp"))
    add("aud-list-without-ours", lambda f: f.sign_claims(aud=[f"{FOREIGN_URL}/mcp"]))
    add(
        "aud-list-ours-and-foreign",
        lambda f: f.sign_claims(aud=[settings.TRADEPLANE_MCP_URL, f"{FOREIGN_URL}/mcp"]),
    )
    add("aud-trailing-slash", lambda f: f.sign_claims(aud=settings.TRADEPLANE_MCP_URL + "/"))
    add("aud-prefix-of-ours", lambda f: f.sign_claims(aud=settings.TRADEPLANE_MCP_URL[:-1]))
    add("aud-is-the-issuer", lambda f: f.sign_claims(aud=settings.TRADEPLANE_PUBLIC_URL))
    add("aud-case-changed", lambda f: f.sign_claims(aud=settings.TRADEPLANE_MCP_URL.upper()))
    add("aud-empty", lambda f: f.sign_claims(aud=""))
    add("aud-object", lambda f: f.sign_claims(aud={"aud": settings.TRADEPLANE_MCP_URL}))

    # -- issuer
    add("iss-foreign", lambda f: f.sign_claims(iss=FOREIGN_URL))
    add("iss-trailing-slash", lambda f: f.sign_claims(iss=settings.TRADEPLANE_PUBLIC_URL + "/"))
    add("iss-substring-of-ours", lambda f: f.sign_claims(iss=settings.TRADEPLANE_PUBLIC_URL[:-1]))
    add("iss-list-of-ours", lambda f: f.sign_claims(iss=[settings.TRADEPLANE_PUBLIC_URL]))

    # -- typ
    add("typ-missing", lambda f: f.sign_header(typ=DROP))
    add("typ-JWT", lambda f: f.sign_header(typ="JWT"))
    add("typ-empty", lambda f: f.sign_header(typ=""))

    # -- every required claim, missing in turn
    for claim in REQUIRED_CLAIMS:
        add(f"claim-{claim}-missing", lambda f, claim=claim: f.sign_claims(**{claim: DROP}))

    # -- claim shapes
    add("sub-integer", lambda f: f.sign_claims(sub=42))
    add("sub-empty", lambda f: f.sign_claims(sub=""))
    add("platform-empty", lambda f: f.sign_claims(platform=""))
    add("platform-integer", lambda f: f.sign_claims(platform=7))
    add("scope-wider-than-issued-signed-by-us", lambda f: f.sign_claims(scope="read trade"))
    add(
        "lifetime-shifted-past-issued-row-signed-by-us",
        lambda f: f.sign_claims(
            iat=f.claims["iat"] + 30, nbf=f.claims["nbf"] + 30, exp=f.claims["exp"] + 30
        ),
    )
    add("scope-unknown", lambda f: f.sign_claims(scope="admin"))
    add("scope-known-plus-unknown", lambda f: f.sign_claims(scope="read admin"))
    add("scope-empty", lambda f: f.sign_claims(scope=""))
    add("scope-whitespace", lambda f: f.sign_claims(scope="   "))
    add("scope-list", lambda f: f.sign_claims(scope=["read"]))
    add("jti-too-short", lambda f: f.sign_claims(jti="short"))
    add("jti-bad-characters", lambda f: f.sign_claims(jti=f.jti + "/../x"))
    add("jti-integer", lambda f: f.sign_claims(jti=12345678901234567890))

    # -- serialisation and encoding
    add("json-serialized-jws-flattened", lambda f: _json_serialized(f, general=False))
    add("json-serialized-jws-general", lambda f: _json_serialized(f, general=True))
    add("non-base64url-plus", lambda f: f.token[:10] + "+" + f.token[11:])
    add("non-base64url-slash", lambda f: f.token[:10] + "/" + f.token[11:])
    add("non-base64url-padding", lambda f: ".".join(s + "==" for s in f.segments))
    add("non-base64url-percent", lambda f: f.token[:5] + "%" + f.token[6:])
    add("non-base64url-unicode", lambda f: f.token[:5] + "é" + f.token[6:])
    add("trailing-newline", lambda f: f.token + "\n")
    add("trailing-space", lambda f: f.token + " ")
    add("leading-space", lambda f: " " + f.token)
    add("bearer-prefix", lambda f: "Bearer " + f.token)
    add("four-segments", lambda f: f.token + "." + f.segments[2])
    add("jwe-shaped-five-segments", lambda f: f"{f.segments[0]}..{f.segments[1]}..{f.segments[2]}")
    add("non-utf8-payload-signed-by-us", _non_utf8_payload)
    add(
        "utf8-bom-payload-signed-by-us",
        lambda f: sign_bytes(json_bytes(good_header()), b"\xef\xbb\xbf" + json_bytes(f.claims)),
    )
    add(
        "utf16-payload-signed-by-us",
        lambda f: sign_bytes(json_bytes(good_header()), json.dumps(f.claims).encode("utf-16")),
    )
    add(
        "utf8-bom-header-signed-by-us",
        lambda f: sign_bytes(b"\xef\xbb\xbf" + json_bytes(good_header()), json_bytes(f.claims)),
    )
    add(
        "payload-not-json-signed-by-us",
        lambda f: sign_bytes(json_bytes(good_header()), b"not json at all"),
    )
    add(
        "payload-json-array-signed-by-us",
        lambda f: sign_bytes(json_bytes(good_header()), json_bytes([f.claims])),
    )
    add(
        "header-json-array-signed-by-us",
        lambda f: sign_bytes(json_bytes([good_header()]), json_bytes(f.claims)),
    )
    add("header-deeply-nested-json", _deeply_nested_header)
    add("payload-deeply-nested-json-attacker-key", _deeply_nested_payload)
    add("duplicate-claim-sub", lambda f: _duplicate_claim(f, "sub", "mallory"))
    add("duplicate-claim-scope", lambda f: _duplicate_claim(f, "scope", "read trade"))
    add("duplicate-claim-exp", lambda f: _duplicate_claim(f, "exp", f.claims["exp"] + 86_400))
    add("duplicate-header-alg", lambda f: _duplicate_header_field(f, "alg", "none"))
    add("duplicate-header-kid", lambda f: _duplicate_header_field(f, "kid", "other"))
    add("token-1MB-signed-by-us", _huge_signed_token)
    add("token-1MB-of-junk", lambda f: "a" * (1024 * 1024))
    add("empty-string", lambda f: "")
    add("only-dots", lambda f: "..")
    add("whitespace-only", lambda f: " \t\n")

    names = [name for name, _ in corpus]
    assert len(names) == len(set(names)), "corpus ids must be unique"
    return corpus


CORPUS = _corpus()


@pytest.mark.parametrize("build", [pytest.param(b, id=name) for name, b in CORPUS])
def test_it_rejects_every_forged_or_malformed_token(forge: Forge, build: Builder) -> None:
    token = build(forge)
    assert token != forge.token
    # The genuine token still verifies: the rejection below is about the variation alone.
    assert verify_access_token(forge.token).jti == forge.jti
    assert_rejected(token)


def test_it_accepts_none_of_the_corpus(forge: Forge) -> None:
    accepted: list[str] = []
    crashed: list[str] = []
    rejected = 0
    for name, build in CORPUS:
        try:
            verify_access_token(build(forge))
        except TokenRejected:
            rejected += 1
        except Exception as exc:  # any other exception is a finding too
            crashed.append(f"{name}: {exc.__class__.__name__}")
        else:
            accepted.append(name)
    assert accepted == []
    assert crashed == []
    assert rejected == len(CORPUS)
    assert len(CORPUS) >= 100


# ---- positive controls for the forging helpers -------------------------------------------


def test_it_accepts_a_token_forged_with_our_key_and_unchanged_claims(forge: Forge) -> None:
    # Without this, every "signed by us" rejection above could be a broken helper.
    principal = verify_access_token(forge.sign())
    assert principal.jti == forge.jti
    assert verify_access_token(forge.sign_claims(scope="read")).scopes == READ


def test_it_forges_well_formed_attack_tokens(forge: Forge) -> None:
    """The attack tokens are what they claim to be: valid under the attacker's own rules."""
    audience, issuer = settings.TRADEPLANE_MCP_URL, settings.TRADEPLANE_PUBLIC_URL
    hs256 = forge.hmac_signed("HS256", our_public_raw())
    assert (
        jwt.decode(hs256, our_public_raw(), algorithms=["HS256"], audience=audience, issuer=issuer)[
            "jti"
        ]
        == forge.jti
    )
    for name, public_key, alg in (
        ("ES256-attacker-key-our-kid", attacker_ec().public_key(), "ES256"),
        ("RS256-attacker-key-our-kid", attacker_rsa().public_key(), "RS256"),
        ("jwk-header-attacker-key", attacker_ed25519().public_key(), "EdDSA"),
    ):
        token = dict(CORPUS)[name](forge)
        claims = jwt.decode(token, public_key, algorithms=[alg], audience=audience, issuer=issuer)
        assert claims["jti"] == forge.jti


def test_it_never_fetches_a_key_location_named_in_the_header(forge: Forge) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/keys"
        for field in ("jku", "x5u"):
            assert_rejected(forge.attacker_signed(good_header(kid=DROP, **{field: url})))
            assert_rejected(forge.sign_header(**{field: url}))
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected


# ---- good tokens -------------------------------------------------------------------------


def test_it_verifies_a_freshly_minted_token(alice: UserCreds) -> None:
    minted = mint(alice, ALL_SCOPES)

    principal = verify_access_token(minted.access_token)

    assert isinstance(principal, Principal)
    assert principal.user_id == "alice"
    assert principal.end_user_pk == alice.user.pk
    assert principal.client_id == alice.platform.client_id
    assert principal.platform_pk == alice.platform.platform.pk
    assert principal.scopes == frozenset({"read", "trade"})
    assert principal.jti == minted.jti
    assert principal.expires_at == minted.expires_at


def test_it_carries_only_the_scopes_asked_for(alice: UserCreds) -> None:
    principal = verify_access_token(mint(alice, READ).access_token)
    assert principal.scopes == READ


def test_it_publishes_keys_that_verify_its_tokens_with_pyjwt(
    alice: UserCreds, client: Client
) -> None:
    minted = mint(alice, ALL_SCOPES)
    response = client.get(JWKS_PATH)
    assert response.status_code == 200
    document = response.json()

    header = jwt.get_unverified_header(minted.access_token)
    assert header == {"alg": "EdDSA", "kid": our_kid(), "typ": "at+jwt"}
    assert IssuedToken.objects.get(jti=minted.jti).key_id == our_kid()

    [jwk] = [key for key in document["keys"] if key["kid"] == header["kid"]]
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(our_public_raw()),
        "kid": our_kid(),
        "use": "sig",
        "alg": "EdDSA",
    }
    assert all("d" not in key for key in document["keys"]), "no private key material"

    claims = jwt.decode(
        minted.access_token,
        key=jwt.PyJWK(jwk),
        algorithms=["EdDSA"],
        audience=settings.TRADEPLANE_MCP_URL,
        issuer=settings.TRADEPLANE_PUBLIC_URL,
        options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
    )
    assert set(claims) == {"iss", "aud", "sub", "platform", "scope", "jti", "iat", "nbf", "exp"}
    assert claims["iss"] == settings.TRADEPLANE_PUBLIC_URL
    assert claims["aud"] == settings.TRADEPLANE_MCP_URL
    assert claims["aud"] == settings.TRADEPLANE_PUBLIC_URL + "/mcp"
    assert claims["sub"] == "alice"
    assert claims["platform"] == alice.platform.client_id
    assert claims["scope"] == "read trade"
    assert claims["jti"] == minted.jti
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["exp"] == int(minted.expires_at.timestamp())


def test_it_lists_the_signing_key_first_in_the_jwks(client: Client, db: None) -> None:
    kids = [key["kid"] for key in client.get(JWKS_PATH).json()["keys"]]
    assert kids[0] == our_kid()
    assert kids == [kid for kid, _ in settings.TRADEPLANE_JWT_KEYS]


def test_it_allows_the_leeway_after_expiry_and_not_a_second_more(alice: UserCreds) -> None:
    minted = mint(alice)
    exp = int(minted.expires_at.timestamp())

    with time_machine.travel(datetime.fromtimestamp(exp + leeway() - 1, tz=UTC), tick=False):
        assert verify_access_token(minted.access_token).jti == minted.jti
    with time_machine.travel(datetime.fromtimestamp(exp + leeway() + 1, tz=UTC), tick=False):
        assert_rejected(minted.access_token)


def test_it_allows_the_leeway_before_not_before_and_not_beyond(alice: UserCreds) -> None:
    minted = mint(alice)
    nbf = unverified_claims(minted.access_token)["nbf"]

    with time_machine.travel(datetime.fromtimestamp(nbf - leeway() + 1, tz=UTC), tick=False):
        assert verify_access_token(minted.access_token).jti == minted.jti
    with time_machine.travel(datetime.fromtimestamp(nbf - leeway() - 2, tz=UTC), tick=False):
        assert_rejected(minted.access_token)


# ---- refusals that come from the database ------------------------------------------------


def test_it_rejects_a_revoked_token_on_the_next_verification(alice: UserCreds) -> None:
    minted = mint(alice)
    assert verify_access_token(minted.access_token).jti == minted.jti

    revoke_token_by_jti(minted.jti, reason="test", actor=OPERATOR)

    assert_rejected(minted.access_token)
    # Other tokens of the same user are untouched.
    other = mint(alice)
    assert verify_access_token(other.access_token).jti == other.jti


def test_it_marks_a_revocation_in_redis_when_it_commits(
    committed_db: None, alice: UserCreds
) -> None:
    minted = mint(alice)
    redis = get_redis()
    assert redis is not None
    key = REVOKED_KEY.format(jti=minted.jti)
    assert key == f"tp:revoked:{minted.jti}"
    assert not redis.exists(key)
    assert verify_access_token(minted.access_token).jti == minted.jti

    revoke_token_by_jti(minted.jti, reason="test", actor=OPERATOR)

    assert redis.exists(key)
    remaining_ms = redis.pttl(key)
    assert 0 < remaining_ms <= (ttl() + 60) * 1000
    assert_rejected(minted.access_token)


def test_it_marks_a_revocation_in_redis_on_commit_callbacks(
    alice: UserCreds, django_capture_on_commit_callbacks: Any
) -> None:
    minted = mint(alice)
    redis = get_redis()
    assert redis is not None

    with django_capture_on_commit_callbacks(execute=True):
        revoke_token_by_jti(minted.jti, reason="test", actor=OPERATOR)

    assert redis.pttl(REVOKED_KEY.format(jti=minted.jti)) > 0
    assert_rejected(minted.access_token)


def test_it_honours_the_redis_revocation_mark_on_its_own(alice: UserCreds) -> None:
    # The fast path is consulted: a mark written by another process is enough.
    minted = mint(alice)
    redis = get_redis()
    assert redis is not None
    key = REVOKED_KEY.format(jti=minted.jti)

    redis.set(key, "1", px=60_000)
    assert_rejected(minted.access_token)

    redis.delete(key)
    assert verify_access_token(minted.access_token).jti == minted.jti


def test_it_rejects_tokens_of_a_deactivated_user(alice: UserCreds, bob: UserCreds) -> None:
    alices, bobs = mint(alice), mint(bob)

    set_end_user_active(alice.user, False, actor=OPERATOR)

    assert_rejected(alices.access_token)
    assert verify_access_token(bobs.access_token).user_id == "bob"


def test_it_rejects_tokens_of_a_deactivated_platform(
    alice: UserCreds, bob: UserCreds, mallory: UserCreds
) -> None:
    alices, bobs, mallorys = mint(alice), mint(bob), mint(mallory)

    set_platform_active(alice.platform.platform, False, actor=OPERATOR)

    assert_rejected(alices.access_token)
    assert_rejected(bobs.access_token)
    assert verify_access_token(mallorys.access_token).user_id == "mallory"


def test_it_rejects_tokens_of_a_deleted_user_even_after_the_id_is_reused(
    acme: PlatformCreds, alice: UserCreds
) -> None:
    old = mint(alice)

    delete_end_user(alice.user, actor=OPERATOR)
    assert_rejected(old.access_token)

    new_alice = make_user(acme, "alice")
    new = mint(new_alice)
    assert_rejected(old.access_token)
    principal = verify_access_token(new.access_token)
    assert principal.end_user_pk == new_alice.user.pk != alice.user.pk


def test_it_rejects_a_deleted_user_by_the_deletion_mark_alone(alice: UserCreds) -> None:
    # Belt and braces: even if the token escaped revocation, deleted_at refuses it.
    minted = mint(alice)
    EndUser.objects.filter(pk=alice.user.pk).update(deleted_at=datetime.now(tz=UTC))

    assert_rejected(minted.access_token)


def test_it_rejects_scopes_beyond_what_the_user_may_now_hold(alice: UserCreds) -> None:
    wide, narrow = mint(alice, ALL_SCOPES), mint(alice, READ)

    alice.user.max_scopes = "read"
    alice.user.save()

    assert_rejected(wide.access_token)
    assert verify_access_token(narrow.access_token).scopes == READ


def test_it_rejects_scopes_beyond_what_the_platform_may_now_hold(alice: UserCreds) -> None:
    wide, narrow = mint(alice, ALL_SCOPES), mint(alice, READ)

    platform = alice.platform.platform
    platform.allowed_scopes = "read"
    platform.save()

    assert_rejected(wide.access_token)
    assert verify_access_token(narrow.access_token).scopes == READ


def test_it_rejects_a_well_signed_token_with_an_unknown_jti(forge: Forge) -> None:
    jti = secrets.token_urlsafe(16)
    assert not IssuedToken.objects.filter(jti=jti).exists()

    assert_rejected(forge.sign_claims(jti=jti))


def test_it_binds_a_token_to_its_tenant(
    forge: Forge, alice: UserCreds, bob: UserCreds, mallory: UserCreds, globex: PlatformCreds
) -> None:
    globex_alice = make_user(globex, "alice")
    mallorys, bobs, globex_alices = mint(mallory), mint(bob), mint(globex_alice)

    attempts = {
        "alice's jti, platform globex": forge.sign_claims(platform=globex.client_id),
        "mallory's jti, sub alice": forge.sign_claims(
            jti=mallorys.jti, sub="alice", platform=globex.client_id
        ),
        "mallory's jti, sub alice, platform acme": forge.sign_claims(jti=mallorys.jti),
        "mallory's jti, platform acme": forge.sign_claims(jti=mallorys.jti, sub="mallory"),
        "bob's jti, sub alice": forge.sign_claims(jti=bobs.jti),
        "globex alice's jti, platform acme": forge.sign_claims(jti=globex_alices.jti),
        "acme alice's jti, globex alice": forge.sign_claims(platform=globex.client_id, sub="alice"),
    }
    accepted = []
    for name, token in attempts.items():
        try:
            verify_access_token(token)
        except TokenRejected:
            continue
        accepted.append(name)
    assert accepted == []

    # And each genuine token still verifies as its own tenant.
    assert verify_access_token(mallorys.access_token).client_id == globex.client_id
    assert verify_access_token(globex_alices.access_token).client_id == globex.client_id
    assert verify_access_token(forge.token).client_id == alice.platform.client_id


# ---- key rotation ------------------------------------------------------------------------


def test_it_rotates_signing_keys(alice: UserCreds, client: Client) -> None:
    old_keys = list(settings.TRADEPLANE_JWT_KEYS)
    old_kid = old_keys[0][0]
    new_key = (f"rotated-{secrets.token_hex(4)}", secrets.token_bytes(32))
    new_kid = new_key[0]
    old = mint(alice)

    with keyring([new_key, *old_keys]):
        assert verify_access_token(old.access_token).jti == old.jti
        new = mint(alice)
        assert jwt.get_unverified_header(new.access_token)["kid"] == new_kid
        assert IssuedToken.objects.get(jti=new.jti).key_id == new_kid
        assert verify_access_token(new.access_token).jti == new.jti

        keys = client.get(JWKS_PATH).json()["keys"]
        assert [key["kid"] for key in keys] == [new_kid, *(kid for kid, _ in old_keys)]
        for token in (old.access_token, new.access_token):
            kid = jwt.get_unverified_header(token)["kid"]
            [jwk] = [key for key in keys if key["kid"] == kid]
            jwt.decode(
                token,
                key=jwt.PyJWK(jwk),
                algorithms=["EdDSA"],
                audience=settings.TRADEPLANE_MCP_URL,
                issuer=settings.TRADEPLANE_PUBLIC_URL,
            )

        # A kid selects the key: the old key's signature under the new kid does not verify.
        header_segment = b64url(json_bytes(good_header(kid=new_kid)))
        payload_segment = old.access_token.split(".")[1]
        swapped = sign_segments(
            header_segment, payload_segment, Ed25519PrivateKey.from_private_bytes(old_keys[0][1])
        )
        assert_rejected(swapped)

    with keyring([new_key]):
        assert_rejected(old.access_token)
        assert verify_access_token(new.access_token).jti == new.jti
        assert [key["kid"] for key in client.get(JWKS_PATH).json()["keys"]] == [new_kid]

    # Back on the original keyring: the caches were reset, the old token verifies again.
    assert our_kid() == old_kid
    assert verify_access_token(old.access_token).jti == old.jti
    assert_rejected(new.access_token)
