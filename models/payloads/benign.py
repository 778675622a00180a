"""Benign values with the characters attacks use: the gap in the real benign sample.

The real benign values (CSIC 2010 form traffic) are names, addresses, card numbers and
passwords of a shop; almost none hold an apostrophe, an angle bracket or an equals sign.
Trained on them alone, a scanner learns "symbols mean attack" and flags ``O'Brien`` and
``2 < 3`` in a search box. These generators add the benign uses of those characters
that real traffic has (names with apostrophes, arithmetic and comparisons in search
boxes, quoted phrases, contractions, heights, emoticons, code-ish search terms, email
addresses, addresses with ``#``), labelled ``norm`` and tagged ``synthetic``.

Tests check held-out hand-written examples that these templates do not produce.
"""

from __future__ import annotations

import random

__all__ = ["synthetic_benign"]

_FIRST = [
    "Sean",
    "Mary",
    "Liam",
    "Aoife",
    "Jean",
    "Anne",
    "Luc",
    "Marie",
    "Paddy",
    "Nora",
    "Conor",
    "Dana",
    "Ravi",
    "Ines",
    "Tomás",
    "Chloé",
    "Zoë",
    "José",
    "Björn",
    "Ana",
    "Saoirse",
    "Niamh",
    "Órla",
    "Ciarán",
    "Renée",
    "Joël",
    "Søren",
    "Łukasz",
    "Małgorzata",
    "François",
    "Ingrid",
    "Kwame",
    "Oluwaseun",
    "Mei",
    "Hiroshi",
    "Priya",
    "Aleksandr",
]
_LAST = [
    "O'Brien",
    "O'Neil",
    "D'Angelo",
    "O'Connor",
    "d'Arcy",
    "O'Hara",
    "L'Estrange",
    "Dell'Orto",
    "O'Reilly",
    "Smith-Jones",
    "McDonald",
    "DiMaggio",
    "O'Leary",
    "D'Souza",
    "N'Diaye",
    "Van't Hoff",
    "Mac'Donald",
    "O'Sullivan",
    "De'Ath",
    "Ní Bhriain",
]
_WORDS = [
    "red",
    "shoes",
    "laptop",
    "battery",
    "charger",
    "garden",
    "table",
    "coffee",
    "cheap",
    "flights",
    "hotel",
    "book",
    "review",
    "size",
    "kids",
    "winter",
    "jacket",
    "phone",
    "case",
    "cable",
    "price",
    "delivery",
    "return",
    "policy",
    "blue",
    "large",
    "small",
]
_ADJ = ["great", "broken", "perfect", "too small", "late", "fine", "cheap", "amazing"]
_CODE = [
    "C++",
    "C#",
    "F#",
    "<div> tag",
    "<br> vs <br/>",
    "html <table> width",
    "a && b",
    "x || y",
    "std::vector<int>",
    "List<String>",
    "i++ vs ++i",
    "a != b",
    "x >= 10",
    "<h1> font size",
    "css > selector",
    "<meta> charset",
    "git log --oneline",
    "Array<T>",
    "if (a < b)",
    "x => x * 2",
    "std::map<K, V>",
    "<input type=text>",
]
_EMO = ["<3", ":-)", ";)", ":'(", "<33", "^_^", ":-P", "o_O", "=)", ":D"]


def _name(r: random.Random) -> str:
    first, last = r.choice(_FIRST), r.choice(_LAST)
    form = r.random()
    if form < 0.25:  # double-barrelled
        last = f"{last}-{r.choice(_LAST)}"
    elif form < 0.35:
        first = f"{first} {r.choice('ABCDEFGHJKLMNPRSTW')}."
    elif form < 0.45:
        first = f"{r.choice(['Dr.', 'Mrs.', 'Mr.', 'Ms.', 'Prof.'])} {first}"
    elif form < 0.55:
        return last
    return f"{first} {last}"


def _math(r: random.Random) -> str:
    a, b, c = r.randint(0, 999), r.randint(1, 99), r.randint(1, 50)
    forms = [
        f"{a} < {b}",
        f"{a}<{b}",
        f"{a} > {b}",
        f"x > {a}",
        f"{a} + {b} = {a + b}",
        f"{a}+{b}={a + b}",
        f"{a} * {b}",
        f"({a} + {b}) / {c}",
        f"{a}/{b}",
        f"{a}%",
        f"{a} <= x <= {a + b}",
        f"{b}^2",
        f"sqrt({a})",
        f"{a} - {b} = {a - b}",
        f"price < {a}",
        f"between {b} and {a}",
        f"{b}-{a}",
        f"${b} - ${a}",
        f"{a} >= {b}",
        f"{b}x{c}",
    ]
    return r.choice(forms)


def _quoted(r: random.Random) -> str:
    w = r.sample(_WORDS, 2)
    forms = [
        f'"{w[0]} {w[1]}"',
        f"'{w[0]}'",
        f"it's {r.choice(_ADJ)}",
        f"don't {w[0]}",
        f"can't find {w[0]}",
        f"{w[0]} 'n' {w[1]}",
        f"{r.randint(4, 6)}' {r.randint(0, 11)}\"",
        f"the {w[0]}'s {w[1]}",
        f"{w[0]} & {w[1]}",
        f"{w[0]}/{w[1]}",
        f"{w[0]} - {w[1]}!",
        f"{w[0]}? {w[1]}.",
        f"{w[0]} (2 pack)",
        f"{w[0]} [{w[1]}]",
        f"{w[0]} {r.choice(_EMO)}",
        f"#{w[0]} #{w[1]}",
        f"{w[0]}@{w[1]}",
    ]
    return r.choice(forms)


def _contact(r: random.Random) -> str:
    last = r.choice(_LAST).lower().replace(" ", "")
    forms = [
        f"{r.choice(_FIRST).lower()}.{last}@example.com",
        f"{r.randint(1, 300)} {r.choice(_LAST)} St., Apt #{r.randint(1, 40)}",
        f"P.O. Box {r.randint(1, 9999)}",
        f"+1 ({r.randint(200, 999)}) {r.randint(200, 999)}-{r.randint(1000, 9999)}",
        f"https://example.com/{r.choice(_WORDS)}?ref={r.choice(_WORDS)}&page={r.randint(1, 9)}",
        f"{r.choice(_FIRST)} & {r.choice(_FIRST)} {r.choice(_LAST)}",
    ]
    return r.choice(forms)


def synthetic_benign(n: int = 3000, seed: int = 0) -> list[str]:
    """``n`` benign values drawn from the templates above (deduplicated, seeded)."""
    r = random.Random(seed)
    makers = [_name, _math, _quoted, _contact, lambda r: r.choice(_CODE), lambda r: r.choice(_EMO)]
    weights = [3, 3, 3, 2, 1, 0.5]
    out: dict[str, None] = {}
    for _ in range(n * 3):
        out[r.choices(makers, weights)[0](r)] = None
        if len(out) >= n:
            break
    return list(out)
