"""Request-content features for the ``payload`` target: normalise, then describe.

Attackers dress the same payload many ways (``%27``, ``&#39;``, ``UnIoN/**/SeLeCt``,
tabs for spaces), so everything is first brought to one canonical form: URL and HTML
decoding repeated until stable (double encoding), Unicode NFKC (full-width letters),
lower case, SQL comments and ``\\xNN`` escapes resolved, whitespace collapsed. The
model then sees hashed character n-grams of that form plus a few statistics
(length, entropy, symbol shares of the normal form) that stay meaningful for short values.

``shape`` maps near-duplicates (the same injection with other numbers) to one key so
that a split can keep them on one side: the data's 10,852 SQL injections are mostly a
few hundred templates with different digits.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = [
    "CONTEXTS",
    "N_FEATURES",
    "N_TEXT",
    "N_TOKENS",
    "STAT_NAMES",
    "cookie_pairs",
    "featurize",
    "in_context",
    "normalise",
    "shape",
    "split_context",
    "stats",
    "tokens",
]

N_TEXT = 2**18  # hashed character n-grams of the normal form
N_TOKENS = 2**16  # hashed n-grams of its token classes (``tokens``)
N_FEATURES = N_TEXT + N_TOKENS  # the hashed columns; the statistics follow
_SQL_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_HEX_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")
_SPACE = re.compile(r"[^\S\n]+")  # runs of white space other than line breaks
_BREAKS = re.compile(r"\s*[\r\n\v\f\x85\u2028\u2029]\s*")  # kept: CRLF injection lives there
_IIS_U = re.compile(r"%u([0-9a-fA-F]{4})")
_DIGITS = re.compile(r"\d+")
_SYMBOLS = "'\"<>()[]{};=-#/\\.%&|`$*+,:!?@^~\n"
STAT_NAMES = [
    "length",
    "log_length",
    "entropy",
    "digit_share",
    "alpha_share",
    "space_share",
    "symbol_share",
    *[f"count_{ord(c):02x}" for c in _SYMBOLS],
]
# Where in the request a value was found. A value is judged in its context: a User-Agent
# against User-Agents, a cookie against cookies. Bare values (no context) are parameters.
CONTEXTS = ["param", "key", "path", "header", "user-agent", "referer", "cookie", "body"]
STAT_NAMES += [f"ctx_{c}" for c in CONTEXTS[1:]]
# Evidence: the grammar of an attack, as counts the model weighs (it learns how much each
# is worth, per context). Each generalises across lists where character n-grams do not:
# ``or a=a`` and ``1 and 7533=7533`` share no n-gram with ``' or 'x'='x`` but are all
# tautologies after a logic word.
_SHELL_WORDS = (
    r"cat|ls|id|whoami|wget|curl|nc|ncat|bash|sh|zsh|ping|echo|uname|powershell|cmd|type"
    r"|nslookup|python|perl|php|ruby|rm|chmod|ps|netstat|ifconfig|ipconfig|dir|sleep|telnet"
)
_EVIDENCE = {
    "ev_logic_compare": re.compile(
        r"(?:^|[\s'\"()])(?:or|and|xor|&&|\|\|)\s*\(?\s*(?:['\"]?[\w.@]*['\"]?)\s*"
        r"(?:=|<|>|<=|>=|<>|!=|like|between|is|in\b|regexp|rlike|sounds)"
    ),
    "ev_union_select": re.compile(r"union\s*(?:all|distinct)?\s*\(?\s*select"),
    "ev_select_from": re.compile(r"\bselect\b.{0,120}?\bfrom\b", re.S),
    "ev_order_having": re.compile(r"\b(?:order|group)\s+by\s+[\d(]|\bhaving\s+[\d(]"),
    "ev_quote_then_code": re.compile(r"['\"`]\s*(?:or|and|union|select|;|\)|--|#|/\*|\|\||&&|=)"),
    "ev_comment_tail": re.compile(r"(?:--|#|/\*)[^\n]{0,20}$"),
    "ev_stacked_query": re.compile(
        r";\s*(?:select|insert|update|delete|drop|exec|execute|declare|shutdown|create|alter"
        r"|truncate|waitfor|return)\b"
    ),
    "ev_time_function": re.compile(r"\b(?:sleep|benchmark|pg_sleep|waitfor\s+delay)\s*[('\"]"),
    "ev_shell_command": re.compile(rf"(?:^|[;&|`\n]|\$\()\s*(?:[\w./-]*/)?(?:{_SHELL_WORDS})\b"),
    "ev_html_code": re.compile(r"<\s*[a-z!/?]|\bon[a-z]{3,}\s*=|(?:java|vb)script\s*:"),
    "ev_traversal": re.compile(r"\.\.[\\/]|[\\/]\.\.(?:$|[\\/;])"),
    "ev_template": re.compile(r"\{\{.*?\}\}|\$\{.*?\}|<%.*?%>|#\{.*?\}|\{%.*?%\}", re.S),
    "ev_nosql_operator": re.compile(
        r"\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|or|and|not|nor|expr|elemmatch)\b"
    ),
    "ev_ldap_filter": re.compile(r"\)\s*\(\s*[|&!]|\*\s*\)\s*\(|\(\s*[|&]\s*\("),
    "ev_header_injection": re.compile(r"\n\s*[\w-]{2,}\s*:"),
}
_TAUTOLOGY = re.compile(r"(['\"]?)([\w.@]+)\1\s*(?:=|==|like|<=>)\s*(['\"]?)([\w.@]+)\3")
STAT_NAMES += ["ev_tautology", *_EVIDENCE]


_EVIDENCE_SCALE = 4.0  # on the scale of a strong n-gram after l2 normalisation and log1p


def _evidence(norm: str) -> list[float]:
    taut = sum(1 for m in _TAUTOLOGY.finditer(norm) if m.group(2) == m.group(4))
    counts = [float(taut), *[float(len(rx.findall(norm))) for rx in _EVIDENCE.values()]]
    return [_EVIDENCE_SCALE * c for c in counts]


_MARK = "\x1e"  # record separator: never in a value the gateway passes (it strips them)
_CTX_INDEX = {c: i for i, c in enumerate(CONTEXTS)}


def in_context(context: str, value: str) -> str:
    """``value`` tagged with where it was found (``CONTEXTS``): the one string the model,
    the compact scanner and ``POST /scan`` take. Parameters stay bare."""
    value = value.replace(_MARK, "")
    if context == "param":
        return value
    if context not in _CTX_INDEX:
        raise ValueError(f"unknown context {context!r}; one of {CONTEXTS}")
    return f"{_MARK}{context}{_MARK}{value}"


def cookie_pairs(header: str) -> list[tuple[str, str]]:
    """A ``Cookie`` header's (name, value) pairs, values percent-decoded and unquoted: what
    the scanner reads of a cookie (the gateway and the training data split it alike)."""
    from urllib.parse import unquote

    out = []
    for pair in header.split(";"):
        k, sep, v = pair.strip().partition("=")
        if not sep:
            k, v = "", k
        out.append((k.strip(), unquote(v.strip().strip('"'))))
    return out


def split_context(tagged: str) -> tuple[str, str]:
    """``in_context``'s inverse: (context, value); an untagged value is a parameter."""
    if tagged.startswith(_MARK):
        end = tagged.find(_MARK, 1)
        if end > 0 and tagged[1:end] in _CTX_INDEX:
            return tagged[1:end], tagged[end + 1 :]
    return "param", tagged


def normalise(value: str, max_rounds: int = 4) -> str:
    """The canonical form of a parameter value (see the module docstring)."""
    s, _ = _decode(value, max_rounds)
    s = unicodedata.normalize("NFKC", s).replace("\x00", "").lower()
    s = _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), s)
    s = _SQL_BLOCK_COMMENT.sub(" ", s)  # /**/ is the classic space in SQL injection
    return _SPACE.sub(" ", _BREAKS.sub("\n", s)).strip()


def _iis(m: re.Match[str]) -> str:
    return chr(int(m.group(1), 16))


def _decode(value: str, max_rounds: int) -> tuple[str, int]:
    s, rounds = value, 0
    for _ in range(max_rounds):
        nxt = html.unescape(unquote_plus(_IIS_U.sub(_iis, s), errors="replace"))
        if nxt == s:
            break
        s, rounds = nxt, rounds + 1
    return s, rounds


def shape(value: str) -> str:
    """Normal form with digit runs collapsed: the key that groups near-duplicates."""
    return _DIGITS.sub("0", normalise(value))


def _entropy(s: str) -> float:
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def stats(value: str) -> list[float]:
    """The statistics of ``STAT_NAMES`` for one (context-tagged) value."""
    ctx, raw = split_context(value)
    norm, rounds = _normal_and_rounds(raw)
    return _stats(raw, norm, rounds, ctx)


def _normal_and_rounds(value: str) -> tuple[str, int]:
    s, rounds = _decode(value, 4)
    s = unicodedata.normalize("NFKC", s).replace("\x00", "").lower()
    s = _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), s)
    s = _SQL_BLOCK_COMMENT.sub(" ", s)
    return _SPACE.sub(" ", _BREAKS.sub("\n", s)).strip(), rounds


def _stats(value: str, norm: str, rounds: int, ctx: str = "param") -> list[float]:
    # only statistics of the normal form: how a value was encoded (case, %-escapes, decoding
    # rounds) is left out on purpose — the sample holds no double-encoded attacks, so a
    # model would learn "encoded = benign" and double encoding would evade it
    n = max(len(norm), 1)
    return [
        float(len(norm)),
        math.log1p(len(norm)),
        _entropy(norm),
        sum(ch.isdigit() for ch in norm) / n,
        sum(ch.isalpha() for ch in norm) / n,
        norm.count(" ") / n,
        sum(ch in _SYMBOLS for ch in norm) / n,
        *[float(norm.count(c)) for c in _SYMBOLS],
        *[1.0 if ctx == c else 0.0 for c in CONTEXTS[1:]],
        *_evidence(norm),
    ]


# --- token classes: the grammar of a value, whatever its words ------------------------------
# ``1 or 2=2`` and ``x' or 'x'='x`` differ in every character n-gram but share a shape:
# number, logic word, number, operator, number. The lexer maps the normal form to one letter
# per token (runs of plain words or numbers collapsed), and the model also sees the
# n-grams of that string, so what it learns about a shape carries over to new words.
_SQL_KEYWORDS = frozenset(
    [
        "select",
        "union",
        "insert",
        "update",
        "delete",
        "drop",
        "from",
        "where",
        "having",
        "group",
        "order",
        "by",
        "limit",
        "offset",
        "into",
        "values",
        "table",
        "database",
        "schema",
        "exec",
        "execute",
        "declare",
        "cast",
        "convert",
        "case",
        "when",
        "then",
        "else",
        "end",
        "null",
        "create",
        "alter",
        "truncate",
        "information_schema",
        "sysobjects",
        "all",
        "distinct",
        "top",
        "waitfor",
        "delay",
        "sleep",
        "benchmark",
        "procedure",
        "load_file",
        "outfile",
        "dumpfile",
    ]
)
_SQL_FUNCS = frozenset(
    [
        "char",
        "chr",
        "concat",
        "concat_ws",
        "substring",
        "substr",
        "ascii",
        "ord",
        "count",
        "version",
        "user",
        "database",
        "extractvalue",
        "updatexml",
        "md5",
        "sha1",
        "hex",
        "unhex",
        "length",
        "mid",
        "if",
        "ifnull",
        "coalesce",
        "pg_sleep",
        "randomblob",
        "utl_inaddr",
        "dbms_pipe",
        "xp_cmdshell",
        "group_concat",
    ]
)
_LOGIC = frozenset(
    ["and", "or", "not", "xor", "like", "is", "in", "rlike", "regexp", "between", "div", "mod"]
)
_SHELL = frozenset(
    [
        "cat",
        "ls",
        "id",
        "whoami",
        "wget",
        "curl",
        "nc",
        "ncat",
        "netcat",
        "bash",
        "sh",
        "zsh",
        "ping",
        "echo",
        "uname",
        "powershell",
        "cmd",
        "type",
        "nslookup",
        "python",
        "perl",
        "php",
        "ruby",
        "rm",
        "chmod",
        "chown",
        "kill",
        "ps",
        "netstat",
        "ifconfig",
        "ipconfig",
        "dir",
        "more",
        "head",
        "tail",
        "touch",
        "mkdir",
        "cp",
        "mv",
        "telnet",
        "ssh",
        "ftp",
        "tftp",
        "sudo",
        "su",
        "env",
        "export",
        "passwd",
    ]
)
_WEB = frozenset(
    [
        "script",
        "alert",
        "confirm",
        "prompt",
        "javascript",
        "vbscript",
        "onerror",
        "onload",
        "onclick",
        "onmouseover",
        "onfocus",
        "svg",
        "img",
        "iframe",
        "body",
        "object",
        "embed",
        "document",
        "cookie",
        "window",
        "location",
        "eval",
        "src",
        "href",
        "style",
        "expression",
        "fromcharcode",
        "innerhtml",
        "settimeout",
        "constructor",
        "prototype",
        "__proto__",
        "jndi",
        "ldap",
        "rmi",
        "class",
        "import",
        "popen",
        "system",
        "globals",
        "builtins",
    ]
)
_LEX = re.compile(
    r"(?P<n>0x[0-9a-f]+|\d+(?:\.\d+)?)|(?P<w>[a-z_][a-z0-9_]*)|(?P<c>--|/\*|\*/|#)"
    r"|(?P<op>\|\||&&|<=|>=|!=|<>|==|:=)|(?P<nl>\n)|(?P<sp>\s+)|(?P<o>.)",
    re.S,
)
_OP_CODES = {"||": "P", "&&": "A", "<=": "L", ">=": "G", "!=": "E", "<>": "E", "==": "Q", ":=": "Q"}
_PUNCT = "'\"`()[]{};=<>|&$!?%@^~*+,.:/\\-"
_MAX_TOKENS = 256


def tokens(norm: str) -> str:
    """The token classes of a normal form, one letter each (``_LEX``): ``n`` number, ``k``
    SQL keyword, ``f`` SQL function, ``l`` logic word, ``x`` shell command, ``j`` web/JNDI
    word, ``w`` other word, ``c`` comment, ``N`` line break, operators and punctuation as
    themselves (two-character operators as one letter), ``o`` anything else. Runs of ``w``
    or ``n`` count once; at most ``_MAX_TOKENS``."""
    out: list[str] = []
    for m in _LEX.finditer(norm):
        kind = m.lastgroup
        if kind == "sp":
            continue
        if kind == "w":
            word = m.group()
            t = (
                "k"
                if word in _SQL_KEYWORDS
                else "f"
                if word in _SQL_FUNCS
                else "l"
                if word in _LOGIC
                else "x"
                if word in _SHELL
                else "j"
                if word in _WEB
                else "w"
            )
        elif kind == "n":
            t = "n"
        elif kind == "c":
            t = "c"
        elif kind == "op":
            t = _OP_CODES[m.group()]
        elif kind == "nl":
            t = "N"
        else:
            ch = m.group()
            t = ch if ch in _PUNCT else "o"
        if t in "wn" and out and out[-1] == t:
            continue
        out.append(t)
        if len(out) >= _MAX_TOKENS:
            break
    return "".join(out)


TOKEN_NGRAMS = (1, 5)


def _hasher(n_features: int, ngrams: tuple[int, int], lowercase: bool) -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        analyzer="char",
        ngram_range=ngrams,
        n_features=n_features,
        alternate_sign=False,
        lowercase=lowercase,
    )


class _LazyHasher:
    def __init__(self, n_features: int, ngrams: tuple[int, int], lowercase: bool) -> None:
        self.args = (n_features, ngrams, lowercase)
        self._h: Any = None

    def transform(self, docs: list[str]) -> Any:
        if self._h is None:
            self._h = _hasher(*self.args)
        return self._h.transform(docs)


_HASHER = _LazyHasher(N_TEXT, (1, 4), True)
_TOKEN_HASHER = _LazyHasher(N_TOKENS, TOKEN_NGRAMS, False)


def featurize(values: Iterable[str]) -> Any:
    """Sparse matrix: hashed character 1-4-grams of the normal form with digit runs
    collapsed (l2-normalised, ``N_TEXT`` columns), hashed 1-5-grams of its token classes
    (``tokens``; l2-normalised, ``N_TOKENS`` columns), then the scaled statistics."""
    from scipy import sparse

    tagged = [
        split_context(v if isinstance(v, str) else ("" if v is None else str(v))) for v in values
    ]
    values = [v for _, v in tagged]
    normal = [_normal_and_rounds(v) for v in values]
    # digit runs collapsed: which digits a value holds says nothing about an attack, and
    # left in, the model learned that benign numbers full of 3s looked like injections
    norms = [_DIGITS.sub("0", n) for n, _ in normal]
    grams = _HASHER.transform(norms)
    toks = _TOKEN_HASHER.transform([tokens(n) for n, _ in normal])
    st = np.array(
        [_stats(v, n, r, c) for (c, v), (n, r) in zip(tagged, normal, strict=True)],
        dtype=np.float64,
    ).reshape(len(values), len(STAT_NAMES))
    # counts and lengths on a log scale: one long value must not dominate the n-grams
    st = np.sign(st) * np.log1p(np.abs(st))
    return sparse.hstack([grams, toks, sparse.csr_matrix(st)], format="csr")


# --- the model's first step -----------------------------------------------------------

TEXT_COLUMN = "payload"


class _Memo:
    """Rows of ``featurize`` by value, kept for the process: an AutoML search featurizes the
    same values once, not once per trial and fold (featurize is a pure function)."""

    def __init__(self, limit: int = 400_000) -> None:
        import threading

        self.limit = limit
        self.index: dict[str, int] = {}
        self.blocks: list[Any] = []
        self.mat: Any = None
        self.lock = threading.Lock()

    def rows(self, values: list[str]) -> Any:
        from scipy import sparse

        with self.lock:
            missing = [v for v in dict.fromkeys(values) if v not in self.index]
            if len(self.index) + len(missing) > self.limit:
                self.index, self.blocks, self.mat = {}, [], None
                missing = list(dict.fromkeys(values))
            if missing:
                n = len(self.index)
                self.blocks.append(featurize(missing))
                self.index.update((v, n + i) for i, v in enumerate(missing))
                self.mat = None
            if self.mat is None:
                self.mat = sparse.vstack(self.blocks, format="csr")
                self.blocks = [self.mat]
            return self.mat[[self.index[v] for v in values]]


_MEMO = _Memo()
_MEMO_MIN_BATCH = 256  # training and evaluation pass thousands of values; requests pass few


def as_values(X: Any) -> list[str]:
    """Values from a frame (its ``payload`` column), a series, an array or a list."""
    if hasattr(X, "columns"):
        if TEXT_COLUMN not in X.columns:
            raise ValueError(f"expected a {TEXT_COLUMN!r} column, got {list(X.columns)}")
        X = X[TEXT_COLUMN]
    if hasattr(X, "ndim") and getattr(X, "ndim", 1) == 2:
        X = X[:, 0]
    return [v if isinstance(v, str) else ("" if v is None else str(v)) for v in list(X)]


class PayloadVectorizer(TransformerMixin, BaseEstimator):
    """Stateless: raw values (a ``payload`` column) → ``featurize`` rows (memoised)."""

    def fit(self, X: Any, y: Any = None) -> PayloadVectorizer:
        return self

    def transform(self, X: Any) -> Any:
        values = as_values(X)
        if len(values) < _MEMO_MIN_BATCH:  # serving a request: nothing to reuse, keep no state
            return featurize(values)
        return _MEMO.rows(values)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.requires_fit = False
        return tags
