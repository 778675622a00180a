"""Benign values with the shapes a real API sees, each in the part of the request it lives in.

The labelled sample's benign side is a shop's form fields; an API's values are timestamps,
UUIDs, JSON in a query value, locale and Accept strings, tokens, URLs, User-Agents and
cookies. Trained without them, a scanner reads ``en-US,en;q=0.9`` as command injection and
``2026-11-02T10:00:00Z`` as SQL. Three sources:

- ``api_benign``: generated families used in training (``TRAIN_FAMILIES``);
- ``eval_benign``: families training never sees (other header kinds, query languages,
  consent cookies, signed URLs, ...), kept for measuring the false-positive rate only;
- ``log_values``: values from a real access log (``apache_combined.log.gz``, Apache-2.0,
  elastic/examples): query values, unusual paths, User-Agents and Referers.

Every value comes as ``(value, context, family)``; ``context`` is one of
``features.payload.CONTEXTS``.
"""

from __future__ import annotations

import gzip
import random
import re
import string
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = ["ACCESS_LOG", "api_benign", "eval_benign", "log_requests", "log_values"]

ACCESS_LOG = Path(__file__).parent / "apache_combined.log.gz"
Row = tuple[str, str, str, str]  # value, context, family, field (header or parameter name)
_SEP = "\x00"
_DEFAULT_FIELD = {
    "param": "q",
    "key": "",
    "path": "",
    "header": "X-Client-Data",
    "user-agent": "User-Agent",
    "referer": "Referer",
    "cookie": "Cookie",
    "body": "comment",
}


def _named(name: str, value: str) -> str:
    return f"{name}{_SEP}{value}"


def _row(made: str, context: str, family: str) -> Row:
    name, sep, value = made.partition(_SEP)
    if not sep:
        return made, context, family, _DEFAULT_FIELD[context]
    return value, context, family, name


_WORDS = [
    "order",
    "status",
    "price",
    "shipping",
    "invoice",
    "account",
    "profile",
    "search",
    "report",
    "export",
    "summary",
    "weather",
    "london",
    "paris",
    "berlin",
    "coffee",
    "shoes",
    "laptop",
    "cable",
    "battery",
    "garden",
    "kids",
    "winter",
    "release",
    "notes",
    "api",
    "docs",
    "billing",
    "refund",
    "support",
    "ticket",
    "login",
    "dashboard",
    "metrics",
    "latency",
]
_FIELDS = ["id", "name", "status", "created_at", "updated_at", "price", "email", "tags", "page"]


def _when(r: random.Random) -> datetime:
    return datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=r.randint(0, 7 * 365 * 86400))


def _timestamp(r: random.Random) -> str:
    t = _when(r)
    forms = [
        t.strftime("%Y-%m-%dT%H:%M:%SZ"),
        t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        t.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        t.strftime("%Y-%m-%dT%H:%M:%S") + r.choice(["+01:00", "-05:00", "+05:30", "-08:00"]),
        t.strftime("%Y-%m-%d %H:%M:%S"),
        t.strftime("%Y-%m-%d"),
        t.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        t.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        t.strftime("%m/%d/%Y"),
        t.strftime("%d.%m.%Y"),
        t.strftime("%Y%m%dT%H%M%SZ"),
        str(int(t.timestamp())),
        str(int(t.timestamp() * 1000)),
        t.strftime("%B %d, %Y"),
        t.strftime("%H:%M"),
        f"{t.strftime('%Y-%m-%d')}..{(t + timedelta(days=r.randint(1, 30))).strftime('%Y-%m-%d')}",
    ]
    return r.choice(forms)


def _ident(r: random.Random) -> str:
    forms = [
        str(uuid.UUID(int=r.getrandbits(128))),
        str(uuid.UUID(int=r.getrandbits(128))).upper(),
        "".join(r.choices("0123456789ABCDEFGHJKMNPQRSTVWXYZ", k=26)),  # ULID
        f"{r.choice(['cus', 'ord', 'inv', 'pi', 'sub'])}_{''.join(r.choices(string.ascii_letters + string.digits, k=14))}",
        "".join(r.choices("0123456789abcdef", k=r.choice([24, 32, 40, 64]))),
        f"{r.randint(1, 10**9)}",
        f"SKU-{r.randint(1000, 99999)}-{r.choice('ABCDEFG')}",
    ]
    return r.choice(forms)


def _json(r: random.Random) -> str:
    f, g = r.sample(_FIELDS, 2)
    forms = [
        f'{{"page":{r.randint(1, 50)}}}',
        f'{{"{f}":"{r.choice(_WORDS)}","{g}":{r.randint(0, 999)}}}',
        f'{{"filter":{{"{f}":"{r.choice(_WORDS)}"}},"sort":"-{g}"}}',
        f"[{', '.join(str(r.randint(0, 99)) for _ in range(r.randint(1, 6)))}]",
        f'["{r.choice(_WORDS)}","{r.choice(_WORDS)}"]',
        f'{{"{f}":null,"{g}":true}}',
        f'{{"range":{{"gte":"{_timestamp(r)}","lt":"{_timestamp(r)}"}}}}',
        f'{{"q":"{r.choice(_WORDS)} {r.choice(_WORDS)}","limit":{r.randint(1, 100)}}}',
    ]
    return r.choice(forms)


def _locale(r: random.Random) -> str:
    langs = ["en-US", "en-GB", "fr-FR", "de-DE", "es-ES", "pt-BR", "ja-JP", "zh-CN", "nl", "it"]
    a, b = r.sample(langs, 2)
    forms = [
        f"{a},{a.split('-')[0]};q=0.9",
        f"{a},{a.split('-')[0]};q=0.9,{b};q=0.8",
        f"{a}, {b};q=0.7, *;q=0.5",
        a,
        a.replace("-", "_"),
        f"{a.split('-')[0]}",
    ]
    return r.choice(forms)


def _accept(r: random.Random) -> str:
    return r.choice(
        [
            "application/json",
            "application/json, text/plain, */*",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
            "*/*",
            "application/vnd.api+json",
            "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
            "gzip, deflate, br",
            "gzip, deflate, br, zstd",
            "application/json; charset=utf-8",
            "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            "application/x-www-form-urlencoded",
            "no-cache",
            "max-age=0",
        ]
    )


def _accept_named(r: random.Random) -> str:
    v = _accept(r)
    if v.startswith("gzip"):
        return _named("Accept-Encoding", v)
    if v in ("no-cache", "max-age=0"):
        return _named("Cache-Control", v)
    if "boundary" in v or "urlencoded" in v or "charset" in v:
        return _named("Content-Type", v)
    return _named("Accept", v)


def _token(r: random.Random) -> str:
    b64 = string.ascii_letters + string.digits + "-_"
    seg = lambda k: "".join(r.choices(b64, k=k))  # noqa: E731
    forms = [
        f"Bearer eyJ{seg(30)}.eyJ{seg(r.randint(40, 120))}.{seg(43)}",
        f"eyJ{seg(30)}.eyJ{seg(r.randint(40, 120))}.{seg(43)}",
        f"Basic {seg(r.randint(12, 40))}==",
        f"gw_{seg(32)}",
        "".join(r.choices(string.ascii_letters + string.digits + "+/", k=r.choice([22, 44, 88])))
        + "==",
        f"sha256={''.join(r.choices('0123456789abcdef', k=64))}",
    ]
    return r.choice(forms)


def _url(r: random.Random) -> str:
    host = r.choice(["example.com", "api.example.org", "shop.example.net", "localhost:8080"])
    w = r.choice(_WORDS)
    forms = [
        f"https://{host}/{w}",
        f"https://{host}/{w}/{r.randint(1, 9999)}?ref={r.choice(_WORDS)}&utm_source=newsletter",
        f"http://{host}/callback?code={_ident(r)}&state={r.randint(1000, 99999)}",
        f"/{w}/{r.choice(_WORDS)}.html",
        f"https://{host}/search?q={quote(r.choice(_WORDS) + ' ' + r.choice(_WORDS))}",
        f"{r.choice(['alice', 'bob', 'j.doe', 'sam+test'])}@{r.choice(['example.com', 'mail.example.org'])}",
        f"mailto:support@{host}",
    ]
    return r.choice(forms)


def _price(r: random.Random) -> str:
    v = r.randint(1, 99999) / 100
    return r.choice(
        [
            f"${v:,.2f}",
            f"€{v:.2f}".replace(".", ","),
            f"{v:.2f} EUR",
            f"£{v:.2f}",
            f"{v:.2f}",
            f"-{v:.2f}",
            f"{r.randint(1, 99)}%",
            f"{v:.1f}-{v + r.randint(1, 50):.1f}",
            f"{r.uniform(-90, 90):.6f},{r.uniform(-180, 180):.6f}",
            f"+{r.randint(1, 99)} {r.randint(100, 999)} {r.randint(1000000, 9999999)}",
        ]
    )


def _search(r: random.Random) -> str:
    w = r.sample(_WORDS, 3)
    return r.choice(
        [
            f"{w[0]} {w[1]}",
            f'"{w[0]} {w[1]}" -{w[2]}',
            f"{w[0]} OR {w[1]}",
            f"{w[0]} AND {w[1]}",
            f"select a {w[0]} for {w[1]}",
            f"how to drop a {w[0]} from the {w[1]}",
            f"union station {w[0]}",
            f"where is my {w[0]}?",
            f"{w[0]} (2 pack) [{w[1]}]",
            f"it's {w[0]}; not {w[1]}",
            f"{w[0]} & {w[1]} | {w[2]}",
            "python list comprehension if else",
            "array.map(x => x * 2)",
            "std::vector<int> size",
            "git commit --amend",
            "SUM(A1:A10) excel",
            "f(x) = x^2 + 3x - 4",
            "(a + b)^2 = a^2 + 2ab + b^2",
            "1/2 + 1/3 = 5/6",
            "x < 5 and y > 3",
            "e = mc^2",
            "C# async/await",
            "what does 'echo $PATH' print",
            "rm vs rm -rf",
            f"{w[0]}: {w[1]}, {w[2]}; etc.",
        ]
    )


def _prose(r: random.Random) -> str:
    w = r.sample(_WORDS, 4)
    return r.choice(
        [
            f"The {w[0]} arrived late (again), but the {w[1]} was fine.",
            f"Please don't send the {w[0]} until Monday - thanks!",
            f'She said: "the {w[0]} is {w[1]}" and left.',
            f"Re: [{w[0]}] {w[1]} update #{r.randint(1, 999)}",
            f"{w[0].title()} <{w[1]}@example.com>",
            f"Note: {w[0]} = {w[1]}; {w[2]} = {w[3]}.",
            f"I'd rate it 4/5 :) -- {w[0]}",
            f"{w[0]}...{w[1]}!!! {w[2]}???",
            f"Size: 10 1/2 (US); colour: {w[0]}/{w[1]}",
            f"Order #{r.randint(1000, 99999)} - {w[0]} x{r.randint(1, 9)} @ ${r.randint(1, 99)}.99",
        ]
    )


def _repeated(r: random.Random) -> str:
    ch = r.choice([*list("xa0=-_.*#~ "), "ab", "la", "ha"])
    return ch * r.choice([20, 80, 200, 500, 2000])


def _user_agent(r: random.Random) -> str:
    v = r.randint(90, 131)
    return r.choice(
        [
            f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
            f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{r.randint(0, 6)} Safari/605.1.15",
            f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
            f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_{r.randint(0, 6)} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            f"Mozilla/5.0 (Linux; Android 14; Pixel {r.randint(5, 9)}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Mobile Safari/537.36",
            f"curl/8.{r.randint(0, 11)}.{r.randint(0, 3)}",
            f"python-requests/2.{r.randint(20, 32)}.{r.randint(0, 3)}",
            f"python-httpx/0.{r.randint(20, 28)}.0",
            f"okhttp/4.{r.randint(9, 12)}.0",
            f"Go-http-client/{r.choice(['1.1', '2.0'])}",
            f"axios/1.{r.randint(0, 7)}.{r.randint(0, 9)}",
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
            f"PostmanRuntime/7.{r.randint(30, 43)}.0",
            f"MyApp/{r.randint(1, 9)}.{r.randint(0, 20)} (iPhone; iOS 17.{r.randint(0, 6)}; Scale/3.00)",
            f"Apache-HttpClient/4.5.{r.randint(10, 14)} (Java/17.0.{r.randint(1, 12)})",
            f"aws-sdk-java/2.{r.randint(20, 29)}.{r.randint(0, 99)} Linux/5.10 OpenJDK_64-Bit_Server_VM/17",
        ]
    )


def _cookie(r: random.Random) -> str:
    tok = "".join(r.choices(string.ascii_letters + string.digits, k=r.choice([16, 26, 32])))
    return r.choice(
        [
            f"session={tok}",
            f"_ga=GA1.2.{r.randint(10**8, 10**9)}.{r.randint(10**9, 2 * 10**9)}",
            f"sessionid={tok}; csrftoken={tok[::-1]}",
            f"theme=dark; lang={_locale(r).split(',')[0]}",
            f"cart=%7B%22items%22%3A{r.randint(1, 9)}%7D",
            f"JSESSIONID={tok.upper()}; Path=/",
            f"prefs={quote(_json(r))}",
            tok,
        ]
    )


def _header(r: random.Random) -> str:
    ip = f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
    return r.choice(
        [
            _named("If-Modified-Since", _timestamp(r)),
            _named("X-Client-Time", _timestamp(r)),
            _named("If-None-Match", f'W/"{"".join(r.choices("0123456789abcdef", k=16))}"'),
            _named("X-Real-IP", ip),
            _named("X-Forwarded-For", f"{ip}, 10.0.0.{r.randint(1, 254)}"),
            _named("Connection", "keep-alive"),
            _named("X-Requested-With", "XMLHttpRequest"),
            _named("X-Request-Id", _ident(r)),
            _named("X-Correlation-Id", _ident(r)),
            _named("Authorization", _token(r)),
            _named("Range", f"bytes=0-{r.randint(100, 10**6)}"),
            _named("X-Forwarded-Proto", "https"),
            _named("Idempotency-Key", _ident(r)),
            _named(
                "X-App-Version",
                f"{r.randint(1, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)} (build {r.randint(100, 9999)})",
            ),
        ]
    )


def _pattern(r: random.Random) -> str:
    """Wildcards, placeholders, globs and small expressions: ``*`` and ``{}`` used benignly."""
    w = r.sample(_WORDS, 3)
    return r.choice(
        [
            f"{w[0]}*",
            f"*{w[0]}*",
            f"*.{r.choice(['png', 'jpg', 'csv', 'json'])}",
            f"src/**/*.{r.choice(['ts', 'py', 'go'])}",
            f"/users/{{id}}/{w[0]}",
            f"/v{r.randint(1, 3)}/{w[0]}/{{{w[1]}_id}}",
            f"Hello {{name}}, your {w[0]} is ready",
            f"{{0}} of {{1}} {w[0]}",
            "★★★★☆",
            "****",
            f"{w[0]} * {r.randint(2, 9)}",
            f"{r.randint(1, 9)} * {r.randint(1, 9)} = ?",
            f"^[a-z0-9_-]{{{r.randint(3, 8)},{r.randint(9, 32)}}}$",
            r"\d{3}-\d{4}",
            f"*.{w[0]}.example.com",
            f"a {{ color: {r.choice(['red', '#fff', 'rgb(0,0,0)'])}; }}",
            f"\\frac{{{r.randint(1, 9)}}}{{{r.randint(1, 9)}}}",
            f"{w[0]}/{w[1]}/*",
            f"{w[0]}:*",
            f"[{w[0]}, {w[1]}]",
            f"({w[0]} | {w[1]}) & {w[2]}",
            f"-{w[0]},+{w[1]}",
            f"{w[0]}.{w[1]}[{r.randint(0, 9)}].{w[2]}",
            f"~/{w[0]}/{w[1]}.txt",
            f"{w[0]}_{w[1]}-v{r.randint(1, 9)}.{r.randint(0, 9)}.tar.gz",
            f"#{w[0]} #{w[1]}",
            f"@{w[0]} thanks!",
        ]
    )


def _multiline(r: random.Random) -> str:
    """Text areas and bodies with line breaks (a break alone is not CRLF injection)."""
    w = r.sample(_WORDS, 4)
    return r.choice(
        [
            f"Hi,\n\nThe {w[0]} is {w[1]}.\n\nThanks,\n{w[2].title()}",
            f"{w[0]}\r\n{w[1]}\r\n{w[2]}",
            f"Line 1: {w[0]}\nLine 2: {w[1]}",
            f"- {w[0]}\n- {w[1]}\n- {w[2]}",
            f"{r.randint(1, 300)} {w[0].title()} Street\nApt {r.randint(1, 40)}\n{w[1].title()}",
            f"Dear team,\r\nplease check order #{r.randint(1000, 99999)}.\r\nRegards",
        ]
    )


def _graphql(r: random.Random) -> str:
    """GraphQL documents and variables, as APIs take them in a query value or a body."""
    w = r.sample(_FIELDS, 3)
    n = r.randint(1, 999)
    return r.choice(
        [
            f"query {{ {w[0]} {{ {w[1]} {w[2]} }} }}",
            f"query Get{w[0].title()}($id: ID!) {{ {w[0]}(id: $id) {{ {w[1]} }} }}",
            f"{{ {w[0]}(first: {n}) {{ edges {{ node {{ {w[1]} }} }} }} }}",
            f'mutation {{ update{w[0].title()}(id: {n}, {w[1]}: "{r.choice(_WORDS)}") {{ {w[2]} }} }}',
            f"fragment F on {w[0].title()} {{ {w[1]} {w[2]} }}",
        ]
    )


def _auth_params(r: random.Random) -> str:
    """Parameter lists of auth and structured headers: ``key="value", key=value``."""
    w = r.sample(_WORDS, 2)
    hexs = "".join(r.choices("0123456789abcdef", k=16))
    return r.choice(
        [
            f'realm="{w[0]}", charset="UTF-8"',
            f'Bearer realm="{w[0]}", error="invalid_token"',
            f'OAuth oauth_consumer_key="{hexs}", oauth_nonce="{hexs[::-1]}", oauth_version="1.0"',
            f'form-data; name="{w[0]}"; filename="{w[1]}.pdf"',
            f'attachment; filename="{w[0]} {w[1]}.csv"',
            f'<https://example.com/{w[0]}?page={r.randint(2, 9)}>; rel="next"',
        ]
    )


# context for each family: a header family is judged as a header
TRAIN_FAMILIES: dict[str, tuple[Callable[[random.Random], str], str, float]] = {
    "timestamp": (_timestamp, "param", 2.0),
    "identifier": (_ident, "param", 1.0),
    "json": (_json, "param", 1.5),
    "locale": (lambda r: _named("Accept-Language", _locale(r)), "header", 1.0),
    "accept": (_accept_named, "header", 0.5),
    "token": (lambda r: _named(r.choice(["Authorization", "X-Api-Key"]), _token(r)), "header", 1.0),
    "url": (_url, "param", 1.5),
    "price": (_price, "param", 1.0),
    "search": (_search, "param", 2.0),
    "prose": (_prose, "body", 1.5),
    "repeated": (_repeated, "param", 0.3),
    "pattern": (_pattern, "param", 1.5),
    "graphql": (_graphql, "param", 0.7),
    "auth-params": (lambda r: _named("Authorization", _auth_params(r)), "header", 0.5),
    "multiline": (_multiline, "body", 0.7),
    "user-agent": (_user_agent, "user-agent", 1.5),
    "cookie": (_cookie, "cookie", 1.0),
    "header": (_header, "header", 1.0),
    "referer": (_url, "referer", 0.5),
    "json-key": (
        lambda r: r.choice([*_FIELDS, "@type", "$schema", "x-api-key", "a.b"]),
        "key",
        0.2,
    ),
}


def api_benign(n: int = 8000, seed: int = 0) -> list[Row]:
    """``n`` distinct (value, context, family) rows from the training families, seeded."""
    r = random.Random(seed)
    names = list(TRAIN_FAMILIES)
    weights = [TRAIN_FAMILIES[k][2] for k in names]
    out: dict[tuple[str, str], Row] = {}
    for _ in range(n * 4):
        fam = r.choices(names, weights)[0]
        gen, ctx, _ = TRAIN_FAMILIES[fam]
        row = _row(gen(r), ctx, fam)
        out.setdefault((row[0], ctx), row)
        if len(out) >= n:
            break
    return list(out.values())


# --- families kept out of training -----------------------------------------------------------
def _eval_param(r: random.Random) -> str:
    w = r.sample(_WORDS, 2)
    t = _when(r)
    return r.choice(
        [
            f"Price gt {r.randint(1, 99)} and Name eq '{w[0].title()}'",  # OData $filter
            f'userName eq "{w[0]}" and meta.lastModified gt "{t.strftime("%Y-%m-%dT%H:%M:%SZ")}"',  # SCIM
            f"title:({w[0]} OR {w[1]}) AND year:[{t.year - 5} TO {t.year}]",  # Lucene
            f"*/{r.randint(2, 30)} * * * *",  # cron
            f"P{r.randint(1, 9)}DT{r.randint(1, 23)}H{r.randint(0, 59)}M",  # ISO 8601 duration
            f"^{r.randint(1, 9)}.{r.randint(0, 9)}.0 || ~{r.randint(1, 9)}.{r.randint(0, 9)}",  # semver
            f"**{w[0]}** and _{w[1]}_ [link](https://example.com/{w[0]})",  # markdown
            f"{t.isoformat()}",
            f"{t.strftime('%Y-%m-%dT%H:%M:%S')}.{r.randint(0, 999999):06d}{r.choice(['Z', '+02:00'])}",
            f"{r.randint(10, 250)}.{r.randint(0, 255)}.0.0/{r.choice([8, 16, 24])}",
            f"{w[0]}:{w[1]} -is:archived sort:updated-desc",
            f"rgba({r.randint(0, 255)}, {r.randint(0, 255)}, {r.randint(0, 255)}, 0.{r.randint(1, 9)})",
            f"{r.randint(1, 9)}x{r.randint(1, 9)} grid; gap=8px",
            f"width={r.randint(100, 1920)}&height={r.randint(100, 1080)}",
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={t.strftime('%Y%m%dT%H%M%SZ')}",
            f"{r.choice(['Lyon', 'Zürich', 'São Paulo', 'Kraków'])} ({r.choice(['FR', 'CH', 'BR', 'PL'])})",
            f"{w[0]} -> {w[1]} => done",
            f"user+{w[0]}@example.co.uk",
            f"{r.randint(1, 12)}/{r.randint(1, 28)} @ {r.randint(1, 12)}:{r.randint(10, 59)}pm",
        ]
    )


def _eval_header(r: random.Random) -> str:
    hexs = "".join(r.choices("0123456789abcdef", k=48))
    return r.choice(
        [
            _named("traceparent", f"00-{hexs[:32]}-{hexs[32:]}-01"),
            _named("Link", f'</v2/{r.choice(_WORDS)}>; rel="preload"; as="fetch"'),
            _named("Cache-Control", "no-cache, no-store, must-revalidate"),
            _named("Cache-Control", f"private, max-age={r.randint(0, 86400)}"),
            _named(
                "Forwarded",
                f"for={r.randint(1, 223)}.{r.randint(0, 255)}.0.{r.randint(1, 254)};proto=https;by=10.0.0.1",
            ),
            _named("If-Match", '"' + hexs[:32] + '"'),
            _named(
                "Authorization",
                f'Digest username="svc", realm="api", nonce="{r.getrandbits(64):x}", uri="/v1/items"',
            ),
            _named("X-Signature", f"t={int(_when(r).timestamp())},v1={r.getrandbits(128):032x}"),
            _named("Accept-Language", f"en-US,en;q=0.{r.randint(1, 9)},fr;q=0.{r.randint(1, 9)}"),
            _named("Sec-CH-UA", f'"Chromium";v="{r.randint(110, 131)}", "Not_A Brand";v="24"'),
            _named("Sec-CH-UA-Mobile", "?0"),
            _named("Sec-CH-UA-Platform", '"Windows"'),
            _named("X-Amzn-Trace-Id", f"Root=1-{r.getrandbits(32):08x}-{hexs[:24]}"),
            _named("Prefer", "return=minimal; handling=lenient"),
            _named("Accept-Datetime", _when(r).strftime("%a, %d %b %Y %H:%M:%S GMT")),
        ]
    )


def _eval_cookie(r: random.Random) -> str:
    t = _when(r)
    return r.choice(
        [
            f"OptanonConsent=isGpcEnabled=0&datestamp={quote(t.strftime('%a %b %d %Y %H:%M:%S GMT+0000'))}&version=202{r.randint(0, 4)}.1.0",
            f"_gid=GA1.2.{r.randint(10**8, 10**9)}.{r.randint(10**9, 2 * 10**9)}; _gat=1",
            f"ajs_anonymous_id=%22{uuid.UUID(int=r.getrandbits(128))}%22",
            f"cookieconsent_status=dismiss; tz={quote(r.choice(['Europe/Paris', 'America/New_York']))}",
        ]
    )


def _eval_ua(r: random.Random) -> str:
    return r.choice(
        [
            f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{r.randint(100, 131)}.0.0.0 Safari/537.36 Edg/{r.randint(100, 131)}.0.0.0",
            f"Dalvik/2.1.0 (Linux; U; Android {r.randint(10, 14)}; SM-G99{r.randint(0, 9)}B Build/UP1A)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            f"Wget/1.{r.randint(19, 21)}.{r.randint(1, 4)}",
            "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
            f"Java/{r.randint(11, 21)}.0.{r.randint(1, 9)}",
            f"kube-probe/1.{r.randint(25, 31)}",
        ]
    )


_EVAL_FAMILIES: dict[str, tuple[Callable[[random.Random], str], str]] = {
    "eval-param": (_eval_param, "param"),
    "eval-header": (_eval_header, "header"),
    "eval-cookie": (_eval_cookie, "cookie"),
    "eval-user-agent": (_eval_ua, "user-agent"),
}


def eval_benign(n: int = 2000, seed: int = 1) -> list[Row]:
    """``n`` distinct rows from families training never sees (measurement only)."""
    r = random.Random(seed)
    names = list(_EVAL_FAMILIES)
    out: dict[tuple[str, str], Row] = {}
    for _ in range(n * 6):
        fam = r.choice(names)
        gen, ctx = _EVAL_FAMILIES[fam]
        row = _row(gen(r), ctx, fam)
        out.setdefault((row[0], ctx), row)
        if len(out) >= n:
            break
    return list(out.values())


# --- a real access log -----------------------------------------------------------------------
_COMBINED = re.compile(
    r'^(?P<ip>\S+) \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<target>\S+)(?: HTTP/[\d.]+)?" \d{3} \S+'
    r' "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<ua>(?:[^"\\]|\\.)*)"'
)
_PLAIN = re.compile(r"^[A-Za-z0-9_\-.~]*$")
EVAL_SHARE = 0.2  # clients whose requests are kept for evaluation


def _is_eval_client(ip: str) -> bool:
    import zlib

    return zlib.crc32(ip.encode()) % 1000 < EVAL_SHARE * 1000


def log_requests(path: Path = ACCESS_LOG, part: str = "eval") -> Iterator[dict[str, str]]:
    """The parsed requests of a combined-format access log: ``method``, ``target``, ``ua``,
    ``referer`` (``-`` when absent). ``part``: ``eval`` (the clients kept for evaluation,
    ``EVAL_SHARE`` of them by a stable hash of the address), ``train`` (the others), ``all``."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _COMBINED.match(line)
            if not m:
                continue
            if part != "all" and _is_eval_client(m["ip"]) != (part == "eval"):
                continue
            yield {
                "method": m["method"],
                "target": m["target"],
                "ua": m["ua"].replace('\\"', '"'),
                "referer": m["referer"],
            }


def log_values(path: Path = ACCESS_LOG) -> Iterator[Row]:
    """(value, context, source, field) for the content of a combined-format access log:
    query values, paths with unusual segments, User-Agents, Referers and their query values.
    ``source`` is ``access-log`` for the training clients' requests and ``access-log-eval``
    for the evaluation clients' (``log_requests``); a value both use counts as training's.
    Deduplicated; lines that do not parse are skipped."""
    rows: dict[tuple[str, str], Row] = {}
    for part, source in (("train", "access-log"), ("eval", "access-log-eval")):
        for req in log_requests(path, part):
            for v, ctx, field in _request_content(req):
                if v and v != "-":
                    rows.setdefault((v, ctx), (v, ctx, source, field))
    yield from rows.values()


def _request_content(req: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    parts = urlsplit(req["target"])
    if any(not _PLAIN.match(seg) for seg in parts.path.split("/")):
        yield unquote(parts.path), "path", ""
    for k, v in parse_qsl(parts.query, keep_blank_values=False):
        yield v, "param", k
    yield req["ua"], "user-agent", "User-Agent"
    ref = req["referer"]
    if ref != "-":
        yield ref, "referer", "Referer"
        for k, v in parse_qsl(urlsplit(ref).query, keep_blank_values=False):
            yield v, "param", k
