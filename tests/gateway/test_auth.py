"""The auth matrix: API keys (hashed, revocable) and JWTs (HS and RS, JWKS, attacks)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.gateway import JwtSettings, RoleRule
from gateway.auth import ApiKey, Authenticator, Consumer, ConsumersFile, Rbac, hash_key, new_api_key

ISS, AUD = "https://issuer.test", "gatewise-api"


def _consumers():
    kid, key, digest = new_api_key()
    rkid, rkey, rdigest = new_api_key()
    cf = ConsumersFile(
        consumers=[
            Consumer(
                client_id="alice",
                tier="pro",
                region="eu-west",
                api_keys=[
                    ApiKey(id=kid, sha256=digest),
                    ApiKey(id=rkid, sha256=rdigest, revoked=True),
                ],
            )
        ]
    )
    return cf, key, rkey


def test_api_keys_are_stored_hashed_and_checked():
    cf, key, revoked = _consumers()
    assert key not in json.dumps(cf.model_dump()) and hash_key(key) in json.dumps(cf.model_dump())
    a = Authenticator(cf)
    ok = a.authenticate({"x-api-key": key})
    assert ok.ok and ok.principal.client_id == "alice" and ok.principal.tier == "pro"
    assert (
        a.authenticate({"x-api-key": key[:-1] + ("A" if key[-1] != "A" else "B")}).reason
        == "invalid_key"
    )
    assert a.authenticate({"x-api-key": "gw_unknown_secret"}).reason == "invalid_key"
    assert a.authenticate({"x-api-key": "not-a-key"}).reason == "invalid_key"
    assert a.authenticate({"x-api-key": revoked}).reason == "revoked_key"
    assert a.authenticate({}).reason == "missing_credentials"


@pytest.fixture()
def hs(monkeypatch):
    monkeypatch.setenv("GW_TEST_SECRET", "s3cret-" * 6)
    cfg = JwtSettings(
        enabled=True, issuer=ISS, audience=AUD, algorithms=["HS256"], secret_env="GW_TEST_SECRET"
    )
    return Authenticator(ConsumersFile(), cfg), ("s3cret-" * 6)


def _claims(**kw):
    now = int(time.time())
    return {
        "sub": "bob",
        "iss": ISS,
        "aud": AUD,
        "exp": now + 300,
        "iat": now,
        "roles": ["consumer"],
        "tier": "free",
    } | kw


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_jwt_matrix_hmac(hs):
    a, secret = hs
    good = jwt.encode(_claims(), secret, algorithm="HS256")
    r = a.authenticate(_bearer(good))
    assert r.ok and r.principal.client_id == "bob" and r.principal.roles == ("consumer",)
    assert (
        a.authenticate(
            _bearer(jwt.encode(_claims(exp=int(time.time()) - 3600), secret, algorithm="HS256"))
        ).reason
        == "expired"
    )
    assert (
        a.authenticate(_bearer(jwt.encode(_claims(aud="other"), secret, algorithm="HS256"))).reason
        == "wrong_audience"
    )
    assert (
        a.authenticate(
            _bearer(jwt.encode(_claims(iss="https://evil"), secret, algorithm="HS256"))
        ).reason
        == "wrong_issuer"
    )
    assert (
        a.authenticate(
            _bearer(jwt.encode(_claims(), "wrong-secret-" * 4, algorithm="HS256"))
        ).reason
        == "invalid_token"
    )
    no_exp = _claims()
    no_exp.pop("exp")
    assert (
        a.authenticate(_bearer(jwt.encode(no_exp, secret, algorithm="HS256"))).reason
        == "invalid_token"
    )
    # tampered payload: a valid signature over different claims
    h, _p, s = good.split(".")
    forged = (
        base64.urlsafe_b64encode(json.dumps(_claims(sub="admin", roles=["admin"])).encode())
        .rstrip(b"=")
        .decode()
    )
    assert a.authenticate(_bearer(f"{h}.{forged}.{s}")).reason == "invalid_token"
    # alg none
    none = jwt.encode(_claims(), None, algorithm="none")
    assert a.authenticate(_bearer(none)).reason == "alg_not_allowed"
    assert a.authenticate(_bearer("garbage")).reason == "invalid_token"


def test_jwt_with_jwks_file_and_algorithm_confusion(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pub))
    jwk.update(kid="k1", use="sig", alg="RS256")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    cfg = JwtSettings(
        enabled=True,
        issuer=ISS,
        audience=AUD,
        algorithms=["RS256"],
        jwks_file=tmp_path / "jwks.json",
    )
    a = Authenticator(ConsumersFile(), cfg)
    good = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    assert a.authenticate(_bearer(good)).ok
    assert (
        a.authenticate(
            _bearer(jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "nope"}))
        ).reason
        == "invalid_token"
    )
    # confusion: an HS256 token "signed" with the public key's PEM as the HMAC secret
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()
    ).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(_claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    sig = base64.urlsafe_b64encode(
        hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    ).rstrip(b"=")
    assert (
        a.authenticate(_bearer((header + b"." + body + b"." + sig).decode())).reason
        == "alg_not_allowed"
    )


def test_jwt_settings_refuse_none_and_mixed_families():
    with pytest.raises(ValueError, match="never allowed"):
        JwtSettings(algorithms=["none"])
    with pytest.raises(ValueError, match="algorithm confusion"):
        JwtSettings(algorithms=["HS256", "RS256"])


def test_rbac_routes_and_methods():
    rbac = Rbac(
        {
            "reader": [RoleRule(methods=["GET"], routes=["/v1/products*"])],
            "analyst": [RoleRule(methods=["GET"], routes=["/v1/reports/*"])],
        }
    )
    assert rbac.allowed(("reader",), "GET", "/v1/products/{id}")
    assert not rbac.allowed(("reader",), "POST", "/v1/products")
    assert not rbac.allowed(("reader",), "GET", "/v1/reports/export")
    assert rbac.allowed(("reader", "analyst"), "GET", "/v1/reports/export")
    assert not rbac.allowed((), "GET", "/v1/products")
