"""The ``labeling:`` section of ``gatewise.yaml``: labelling functions and the label model
(weak supervision), the review queue, and the harm budget a shadow policy must clear before
it may enforce (``labeling/``).

``LabelingFunction(name="many_failed_logins", vote="abusive",
where="n_401_5m >= 10 AND distinct_addresses_5m >= 3")``
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from config._base import Strict as _Strict

__all__ = ["HarmBudget", "LabelingFunction", "LabelingSettings", "ReviewSettings"]


class LabelingFunction(_Strict):
    """One weak signal: ``where`` (a DuckDB boolean expression over the columns of a client
    window, ``docs/labels.md``) votes ``vote`` for the window; otherwise it abstains."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    vote: Literal["abusive", "legitimate"]
    where: str = Field(min_length=1)
    description: str = ""


class ReviewSettings(_Strict):
    """How the review queue is filled."""

    per_round: int = Field(50, ge=1, description="clients `gatewise review export` asks about")
    min_requests: int = Field(
        5, ge=1, description="clients with fewer requests in the period are not worth a review"
    )


class HarmBudget(_Strict):
    """A policy or model not validated on the traffic it judges may enforce only when the
    one-sided upper confidence bound of the legitimate requests it would harm, as a share of
    all legitimate requests, is under ``share``."""

    share: float = Field(0.001, gt=0, lt=1, description="0.001 = 0.1 % of legitimate requests")
    confidence: float = Field(0.95, ge=0.5, lt=1)
    take_all_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the acted-on clients covering this share of the would-be harm (the "
        "largest first) are reviewed one by one; the rest is bounded from a PPS sample",
    )
    max_take_all: int = Field(40, ge=0, description="at most this many reviewed one by one")
    drift_share: float = Field(
        0.3, gt=0, le=1, description="drifted input share (vs training) that reopens the question"
    )


def _default_functions() -> list[LabelingFunction]:
    f = LabelingFunction
    return [
        f(
            name="failed_logins_burst",
            vote="abusive",
            where="n_401_5m >= 8 AND rate_401_5m >= 0.6",
            description="many failed logins in five minutes",
        ),
        f(
            name="failed_logins_many_addresses",
            vote="abusive",
            where="n_401_5m >= 5 AND distinct_addresses_5m >= 4",
            description="failed logins from several addresses at once (credential stuffing)",
        ),
        f(
            name="network_failing_clients",
            vote="abusive",
            where="network_failing_clients_5m >= 4",
            description="several clients failing logins from one /24 network in five minutes",
        ),
        f(
            name="sequential_ids",
            vote="abusive",
            where="enumeration_score_1h >= 0.8 AND enumeration_score_5m >= 0.6"
            " AND request_count_5m >= 8",
            description="walks an id space in order (enumeration)",
        ),
        f(
            name="many_addresses",
            vote="abusive",
            where="distinct_addresses_1h >= 15 AND distinct_networks_1h >= 2",
            description="one key from many addresses on several networks (a shared or leaked key)",
        ),
        f(
            name="sensitive_heavy",
            vote="abusive",
            where="sensitive_share_1h >= 0.35 AND request_count_1h >= 12 AND rate_401_1h > 0",
            description="a third of an hour's requests on login, password reset or export, "
            "with failed logins among them",
        ),
        f(
            name="flood_rate",
            vote="abusive",
            where="request_count_5m >= 5 * 5 * tier_limit_per_minute",
            description="five times the tier's static limit",
        ),
        f(
            name="canary_route",
            vote="abusive",
            where="canary_hits_5m >= 1",
            description="a route no legitimate client knows (labeling.canary_routes)",
        ),
        f(
            name="payload_attacks",
            vote="abusive",
            where="scan_attacks_5m >= 2",
            description="the payload scanner saw attacks in the request content",
        ),
        f(
            name="anomalous",
            vote="abusive",
            where="anomaly_score >= 0.995",
            description="the day-one anomaly model's top 0.5 % (when it has scored the window)",
        ),
        f(
            name="quiet_clean",
            vote="legitimate",
            where="request_count_1h <= 30 AND rate_4xx_1h = 0 AND distinct_addresses_1h <= 2"
            " AND enumeration_score_1h < 0.3 AND sensitive_share_1h < 0.2",
            description="light, error-free use from one or two addresses",
        ),
    ]


class LabelingSettings(_Strict):
    """Weak supervision and the enforcement budget."""

    functions: list[LabelingFunction] = Field(default_factory=_default_functions)
    module: str | None = Field(
        None,
        description="a Python module with more functions: each ``lf_<name>(windows) -> votes`` "
        "(1 abusive, 0 legitimate, -1 abstain per row of the windows DataFrame)",
    )
    canary_routes: list[str] = Field(
        default_factory=lambda: [
            "/.env",
            "/.git/*",
            "/wp-login.php",
            "/wp-admin/*",
            "/phpmyadmin*",
            "/admin*",
            "/actuator/*",
            "/v1/internal/*",
            "/server-status",
        ],
        description="path patterns (shell style) no legitimate client calls",
    )
    automation_agents: str = Field(
        r"(?i)(curl|wget|python-requests|python-urllib|aiohttp|httpx|go-http-client|java/|"
        r"okhttp|axios|node-fetch|libwww|scrapy|httpclient|powershell|postman)",
        description="user agents of scripts and HTTP libraries (a regex)",
    )
    confident: float = Field(
        0.8,
        gt=0.5,
        lt=1,
        description="weak labels train only where P(abusive) >= this or <= 1 - this",
    )
    silent_prior: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="P(abusive) of a window no function voted on, before reviews say otherwise",
    )
    silent_strength: float = Field(
        20.0, gt=0, description="how many reviewed silent windows that prior is worth"
    )
    review: ReviewSettings = ReviewSettings()
    harm: HarmBudget = HarmBudget()

    @field_validator("automation_agents")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _unique(self) -> LabelingSettings:
        names = [f.name for f in self.functions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"labelling function names must be unique: {dup}")
        return self
