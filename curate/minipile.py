"""A seeded generator of a Pile-like text mixture (the embedded "mini-Pile").

Seven domains, each document labelled with one of them: `prose` (sentences of Zipfian
pseudo-words), `latex`, `xml` (XML and HTML), `code` (Python and C), `json` (objects and JSON
lines), `table` (markdown / CSV tables and bulleted lists) and `repeat` (meaningless repeated
strings). The structured domains carry long-range EXACT repeats of content that local statistics
cannot guess (fresh random identifiers, hashes, attribute values, labels, names) at varying
distances: the training signal that builds induction heads. How much of it a document carries
varies: a share of documents are strong "catalysts" (long random payloads recurring several
times), the rest carry only short identifier recurrences or none.
"""
from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from curate.errors import CurateError

DOMAINS: tuple[str, ...] = ("prose", "latex", "xml", "code", "json", "table", "repeat")

DEFAULT_SHARES: dict[str, float] = {
    "prose": 0.30,
    "latex": 0.10,
    "xml": 0.12,
    "code": 0.14,
    "json": 0.12,
    "table": 0.10,
    "repeat": 0.12,
}



@dataclass(frozen=True)
class MixtureConfig:
    """The knobs of the mixture; the defaults are the tuned default corpus."""

    shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    doc_chars: int = 220  # mean document length in characters (about one 128-token row)
    spans_mean: float = 1.5  # mean number of long repeated spans per structured document (geometric)
    span_chars: tuple[int, int] = (20, 60)  # length range of a long span's random payload, in characters
    span_repeats: tuple[int, int] = (2, 3)  # occurrences of each payload
    record_copy_share: float = 0.4  # share of long spans realised as an earlier record copied verbatim
    short_reuse: float = 0.3  # probability that a short identifier slot reuses an earlier one
    lexicon_size: int = 6000  # pseudo-words in the prose vocabulary
    zipf_exponent: float = 1.05  # prose word frequencies ~ 1 / rank^exponent

    def __post_init__(self) -> None:
        unknown = set(self.shares) - set(DOMAINS)
        if unknown:
            raise CurateError(f"mixture shares: unknown domain(s) {', '.join(sorted(unknown))} (known: {', '.join(DOMAINS)})")
        if any(v < 0 for v in self.shares.values()) or sum(self.shares.values()) <= 0:
            raise CurateError("mixture shares must be non-negative and not all zero")
        for name in ("record_copy_share", "short_reuse"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise CurateError(f"mixture {name} must be within [0, 1], got {v}")
        if self.spans_mean < 0:
            raise CurateError(f"mixture spans_mean must be non-negative, got {self.spans_mean}")
        for name in ("span_chars", "span_repeats"):
            lo, hi = getattr(self, name)
            if lo < 1 or hi < lo:
                raise CurateError(f"mixture {name} must be a range 1 <= lo <= hi, got ({lo}, {hi})")
        if self.span_repeats[0] < 2:
            raise CurateError("mixture span_repeats must start at 2 or more (a span must recur)")
        if self.doc_chars < 40:
            raise CurateError(f"mixture doc_chars must be at least 40, got {self.doc_chars}")
        if self.lexicon_size < 100:
            raise CurateError(f"mixture lexicon_size must be at least 100, got {self.lexicon_size}")

    def normalized_shares(self) -> dict[str, float]:
        total = sum(self.shares.values())
        return {d: self.shares.get(d, 0.0) / total for d in DOMAINS}

    def to_json(self) -> dict:
        out = asdict(self)
        out["span_chars"] = list(self.span_chars)
        out["span_repeats"] = list(self.span_repeats)
        return out


@dataclass(frozen=True)
class Document:
    """One generated document, its domain label and how many long repeated spans it carries."""

    text: str
    domain: str
    copy_spans: int


# ---------------------------------------------------------------------------------------------
# random material
# ---------------------------------------------------------------------------------------------
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "kr", "pl", "pr", "sh", "sk", "st", "str", "th", "tr", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ie", "oo", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "t", "nd", "st", "rk", "ng", "x"]
_HEX = "0123456789abcdef"
_ALNUM = string.ascii_lowercase + string.digits
_PRINTABLE = string.ascii_letters + string.digits + string.punctuation


# every onset-vowel-coda combination (codas repeated as listed): one draw = three uniform draws
_SYLLABLES = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]


def _pseudo_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choices(_SYLLABLES, k=syllables))


class Lexicon:
    """Prose vocabulary: distinct pseudo-words drawn with Zipfian frequencies."""

    def __init__(self, size: int, exponent: float, seed: int) -> None:
        rng = random.Random(f"lexicon-{seed}")
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < size:
            # frequent words are short, like function words
            n_syll = 1 if len(words) < 60 else rng.choice((1, 2, 2, 2, 3, 3, 4))
            w = _pseudo_word(rng, n_syll)
            if w not in seen and len(w) > 1:
                seen.add(w)
                words.append(w)
        self.words = words
        weights = [1.0 / (rank + 1) ** exponent for rank in range(size)]
        total = 0.0
        self.cum = []
        for w in weights:
            total += w
            self.cum.append(total)

    def sample(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.words, cum_weights=self.cum, k=k)


def _identifier(rng: random.Random, style: str = "snake") -> str:
    """A fresh random identifier (unguessable from local statistics)."""
    parts = [_pseudo_word(rng, rng.choice((1, 2))) for _ in range(rng.choice((1, 2, 2, 3)))]
    if rng.random() < 0.3:
        parts[-1] += str(rng.randrange(10, 100))
    if style == "camel":
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    if style == "pascal":
        return "".join(p.capitalize() for p in parts)
    return "_".join(parts)


def _name(rng: random.Random) -> str:
    return _pseudo_word(rng, rng.choice((1, 2, 2))).capitalize()


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_HEX, k=n))


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_ALNUM, k=n))


def _payload(rng: random.Random, n_chars: int) -> str:
    """A long random value of about `n_chars` characters: a hash, a token, a path, a name list."""
    kind = rng.randrange(5)
    if kind == 0:
        return _hex(rng, n_chars)
    if kind == 1:
        return _alnum(rng, n_chars)
    if kind == 2:  # uuid-like groups
        groups = []
        while sum(len(g) + 1 for g in groups) < n_chars:
            groups.append(_hex(rng, rng.choice((4, 4, 8, 12))))
        return "-".join(groups)
    if kind == 3:  # a path of random identifiers
        parts = []
        while sum(len(p) + 1 for p in parts) < n_chars:
            parts.append(_identifier(rng))
        return "/".join(parts)
    words = []  # a run of random names
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append(_name(rng) if rng.random() < 0.5 else _pseudo_word(rng, rng.choice((1, 2, 3))))
    return " ".join(words)


def _number(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return str(rng.randrange(0, 1000))
    if r < 0.8:
        return f"{rng.uniform(0, 1000):.{rng.choice((1, 2, 3))}f}"
    return str(rng.randrange(1000, 100000))


class _Copy:
    """The copy plan of one document: long random payloads that recur, earlier records to copy
    verbatim, and short identifiers that may recur."""

    def __init__(self, rng: random.Random, cfg: MixtureConfig, n_spans: int) -> None:
        self.rng = rng
        self.cfg = cfg
        self.n_spans = n_spans
        self.payloads: list[str] = []
        self.uses: list[int] = []
        self.record_copies = 0
        for _ in range(n_spans):
            if rng.random() < cfg.record_copy_share:
                self.record_copies += 1
            else:
                self.payloads.append(_payload(rng, rng.randint(*cfg.span_chars)))
                self.uses.append(rng.randint(*cfg.span_repeats))

    def pending(self) -> bool:
        return self.record_copies > 0 or any(u > 0 for u in self.uses)

    def slot(self, fresh: Callable[[], str], prob: float = 0.8) -> str:
        """A value slot: a payload with uses left (with probability `prob`), else a fresh value."""
        live = [i for i, u in enumerate(self.uses) if u > 0]
        if live and self.rng.random() < prob:
            i = self.rng.choice(live)
            self.uses[i] -= 1
            return self.payloads[i]
        return fresh()

    def short(self, pool: list[str], fresh: Callable[[], str], prob: float | None = None) -> str:
        """A short identifier: an earlier one from `pool` with probability `short_reuse`, else fresh."""
        p = self.cfg.short_reuse if prob is None else prob
        if pool and self.rng.random() < p:
            return self.rng.choice(pool)
        v = fresh()
        pool.append(v)
        return v

    def copy_record(self, records: list[str]) -> str | None:
        """An earlier record verbatim, if the plan still holds a record copy (at a random moment)."""
        if self.record_copies > 0 and records and self.rng.random() < 0.5:
            self.record_copies -= 1
            return self.rng.choice(records)
        return None


def _fill(rng: random.Random, copy: _Copy, target: int, head: list[str], make_record: Callable[[], str], sep: str = "\n") -> list[str]:
    """Records until the document reaches `target` characters and its copy plan is spent
    (capped at twice the target); some records are verbatim copies of earlier ones."""
    records: list[str] = []
    size = sum(len(x) + len(sep) for x in head)
    while size < target or copy.pending():
        rec = copy.copy_record(records)
        if rec is None:
            rec = make_record()
            records.append(rec)
        head.append(rec)
        size += len(rec) + len(sep)
        if size > 2 * target:
            break
    return head


# ---------------------------------------------------------------------------------------------
# domains
# ---------------------------------------------------------------------------------------------
def _sentence(rng: random.Random, lex: Lexicon, topic: list[str] | None = None) -> str:
    n = rng.randint(4, 14)
    words = lex.sample(rng, n)
    if topic:
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            words[rng.randrange(n)] = rng.choice(topic)
    if n > 8 and rng.random() < 0.5:
        words[rng.randrange(2, n - 2)] += ","
    s = " ".join(words)
    return s[0].upper() + s[1:] + rng.choice((".", ".", ".", ".", "?", "!", ";"))


def gen_prose(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """Paragraphs of sentences of Zipfian pseudo-words; some documents recur a few topic names."""
    topic = [_name(rng) for _ in range(rng.randint(1, 3))] if rng.random() < copy.cfg.short_reuse * 2 else None
    out: list[str] = []
    size = 0
    while size < target:
        s = _sentence(rng, lex, topic)
        if out and rng.random() < 0.15:
            s = "\n\n" + s
        out.append(s)
        size += len(s) + 1
    return " ".join(out)


_LATEX_SYMBOLS = ["\\alpha", "\\beta", "\\gamma", "\\delta", "\\lambda", "\\mu", "\\sigma", "\\theta", "\\omega", "\\phi"]


def _latex_expr(rng: random.Random) -> str:
    sym = rng.choice(_LATEX_SYMBOLS)
    v = rng.choice("xyzuvw")
    i = rng.choice("ijkn")
    forms = [
        f"\\sum_{{{i}=1}}^{{N}} {sym}_{{{i}}} {v}_{{{i}}}^{{{rng.randint(2, 4)}}}",
        f"\\frac{{{sym} + {rng.randint(1, 9)}}}{{{v}^{{2}} - {rng.choice(_LATEX_SYMBOLS)}}}",
        f"\\int_{{0}}^{{\\infty}} e^{{-{sym} {v}}} \\, d{v}",
        f"\\left\\| {v} - {sym} \\right\\|_{{{rng.randint(1, 2)}}} \\leq {rng.randint(1, 99)}",
        f"{sym}_{{{i}}} = \\sqrt{{{v}_{{{i}}} + {rng.randint(1, 9)}}}",
    ]
    return rng.choice(forms)


def gen_latex(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """Sections, labelled equations referenced later, citations, itemize lists, macros."""
    labels: list[str] = []
    cites: list[str] = []
    macro = _pseudo_word(rng, 2)
    head = []
    if rng.random() < 0.5:
        head.append(f"\\newcommand{{\\{macro}}}{{\\mathcal{{{rng.choice(string.ascii_uppercase)}}}}}")
    head.append(f"\\section{{{' '.join(lex.sample(rng, rng.randint(2, 4))).title()}}}")

    def record() -> str:
        r = rng.random()
        if r < 0.35:
            label = copy.short(labels, lambda: f"eq:{_identifier(rng)}", 0.0)
            body = copy.slot(lambda: _latex_expr(rng))
            return f"\\begin{{equation}}\n  \\label{{{label}}}\n  {body}\n\\end{{equation}}"
        if r < 0.65:
            text = _sentence(rng, lex)
            if labels:
                text += f" By \\eqref{{{copy.short(labels, lambda: 'eq:' + _identifier(rng), 0.8)}}}, the bound holds."
            key = copy.short(cites, lambda: f"{_pseudo_word(rng, 2)}{rng.randint(1980, 2024)}{_alnum(rng, 2)}")
            return f"{text} See \\cite{{{copy.slot(lambda: key, 0.4)}}}."
        if r < 0.85:
            items = [f"  \\item {_sentence(rng, lex)}" for _ in range(rng.randint(1, 2))]
            items.append(f"  \\item \\texttt{{{copy.slot(lambda: _identifier(rng))}}}")
            return "\\begin{itemize}\n" + "\n".join(items) + "\n\\end{itemize}"
        return f"\\subsection{{{' '.join(lex.sample(rng, rng.randint(1, 3))).title()}}}\nLet ${_latex_expr(rng)}$ and \\textbf{{{copy.slot(lambda: rng.choice(lex.words[:400]))}}}."

    return "\n".join(_fill(rng, copy, target, head, record))


_HTML_TAGS = ["div", "span", "section", "article", "p", "li", "td"]


def gen_xml(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """XML records with ids and attribute values, or HTML with classes and links; values recur."""
    ids: list[str] = []
    classes: list[str] = []
    if rng.random() < 0.5:
        root = _identifier(rng, "camel")
        item = _identifier(rng, "camel")
        attr = _identifier(rng)

        def record() -> str:
            rid = copy.short(ids, lambda: _hex(rng, rng.choice((6, 8))))
            name = copy.slot(lambda: _name(rng) + " " + _name(rng))
            return (
                f'  <{item} id="{rid}" {attr}="{_number(rng)}">\n'
                f"    <name>{name}</name>\n"
                f'    <ref target="{copy.short(ids, lambda: _hex(rng, 6), 0.6)}"/>\n'
                f"  </{item}>"
            )

        lines = _fill(rng, copy, target, ['<?xml version="1.0" encoding="UTF-8"?>', f"<{root}>"], record)
        return "\n".join(lines + [f"</{root}>"])
    title = " ".join(lex.sample(rng, rng.randint(2, 4))).title()

    def element() -> str:
        tag = rng.choice(_HTML_TAGS)
        cls = copy.short(classes, lambda: _identifier(rng).replace("_", "-"), 0.6)
        href = "/" + copy.slot(lambda: copy.short(ids, lambda: _identifier(rng)))
        text = " ".join(lex.sample(rng, rng.randint(2, 5)))
        if rng.random() < 0.5:
            return f'<{tag} class="{cls}"><a href="{href}">{text}</a></{tag}>'
        return f'<ul class="{cls}">\n  <li><a href="{href}">{text}</a></li>\n</ul>'

    lines = _fill(rng, copy, target, ["<html>", f"<head><title>{title}</title></head>", "<body>"], element)
    return "\n".join(lines + ["</body>", "</html>"])


def gen_code(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """Python or C functions whose names and arguments recur in calls and bodies."""
    python = rng.random() < 0.6
    funcs: list[str] = []
    if python:
        head = [f"import {_identifier(rng)}", f"from {_identifier(rng)} import {_identifier(rng, 'pascal')}", ""]
    else:
        head = [f"#include <{rng.choice(('stdio', 'stdlib', 'string', 'stdint'))}.h>", f'#include "{_identifier(rng)}.h"', ""]

    def function() -> str:
        fname = _identifier(rng)
        args = [_identifier(rng) for _ in range(rng.randint(1, 2))]
        callee = copy.short(funcs, lambda: _identifier(rng), 0.7)
        const = copy.slot(lambda: _alnum(rng, rng.randint(4, 10)))
        funcs.append(fname)
        if python:
            return (
                f"def {fname}({', '.join(args)}):\n"
                f"    {args[0]} = {callee}({', '.join(args[1:] or [args[0]])})\n"
                f"    if {args[0]} is None:\n"
                f'        raise ValueError("{const}")\n'
                f"    return {args[0]}\n"
            )
        ctype = rng.choice(("int", "size_t", "uint32_t", "double"))
        return (
            f"static {ctype} {fname}({', '.join(f'{ctype} {a}' for a in args)}) {{\n"
            f"    {ctype} {args[0]}_tmp = {callee}({', '.join(args)});\n"
            f'    if ({args[0]}_tmp < 0) {{ fprintf(stderr, "{const}\\n"); return -1; }}\n'
            f"    return {args[0]}_tmp;\n}}\n"
        )

    return "\n".join(_fill(rng, copy, target, head, function))


def gen_json(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """An array of records or JSON lines; ids, owners and values recur."""
    keys = [_identifier(rng) for _ in range(rng.randint(1, 3))]
    ids: list[str] = []
    owners: list[str] = []

    def record() -> str:
        fields = [f'"id": "{copy.short(ids, lambda: _hex(rng, 8), 0.2)}"', f'"owner": "{copy.short(owners, lambda: _name(rng), 0.5)}"']
        for k in keys:
            if rng.random() < 0.5 or any(copy.uses):
                fields.append(f'"{k}": "{copy.slot(lambda: _pseudo_word(rng, 2))}"')
            else:
                fields.append(f'"{k}": {_number(rng)}')
        if rng.random() < 0.3:
            fields.append(f'"tags": [{", ".join(chr(34) + w + chr(34) for w in lex.sample(rng, rng.randint(1, 3)))}]')
        return "{" + ", ".join(fields) + "}"

    records = _fill(rng, copy, target, [], record)
    if rng.random() < 0.4:
        return "\n".join(records)
    return "[\n  " + ",\n  ".join(records) + "\n]"


def gen_table(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """A markdown table, a CSV file or a bulleted list; codes, names and whole rows recur."""
    kind = rng.randrange(3)
    codes: list[str] = []
    names: list[str] = []
    header = [w.capitalize() for w in lex.sample(rng, 4)]

    def line() -> str:
        code = copy.short(codes, lambda: f"{_alnum(rng, 3).upper()}-{rng.randint(100, 9999)}")
        name = copy.slot(lambda: copy.short(names, lambda: _name(rng)))
        c = [name, code, _number(rng), rng.choice(lex.words[:300])]
        if kind == 0:
            return "| " + " | ".join(c) + " |"
        if kind == 1:
            return ",".join(c)
        return f"{rng.choice(('-', '*', '-'))} **{c[0]}** ({c[1]}): {' '.join(lex.sample(rng, rng.randint(2, 5)))}"

    if kind == 0:
        head = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    elif kind == 1:
        head = [",".join(h.lower() for h in header)]
    else:
        head = []
    return "\n".join(_fill(rng, copy, target, head, line))


def gen_repeat(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """Meaningless repeated strings: random units repeated with separators, or short periods."""
    out: list[str] = []
    size = 0
    while size < target or copy.pending():
        live = [i for i, u in enumerate(copy.uses) if u > 0]
        if live:  # a long payload, all its occurrences in one run
            i = live[0]
            unit = copy.payloads[i] if rng.random() < 0.5 else _random_chars(rng, len(copy.payloads[i]))
            times = copy.uses[i]
            copy.uses[i] = 0
        elif copy.record_copies > 0 and out:  # an earlier run again, later in the document
            copy.record_copies -= 1
            block = rng.choice(out)
            out.append(block)
            size += len(block) + 1
            continue
        elif copy.record_copies > 0:
            unit = _random_chars(rng, rng.randint(*copy.cfg.span_chars))
            times = 1
        else:  # a short period: guessable from local statistics after one cycle
            unit = rng.choice(("=", "-", "*", "ab", "xo", "#", "~", ".", "lol", "ha", "na", "0"))
            times = rng.randint(6, 24)
        sep = rng.choice((" ", " ", "", "\n", " | ", ", "))
        block = sep.join([unit] * times)
        if rng.random() < 0.5:  # noise between runs
            block += " " + _random_chars(rng, rng.randint(2, 12))
        out.append(block)
        size += len(block) + 1
        if size > 2 * target:
            break
    return "\n".join(out)


def _random_chars(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_PRINTABLE, k=n))


GENERATORS: dict[str, Callable[[random.Random, Lexicon, int, _Copy], str]] = {
    "prose": gen_prose,
    "latex": gen_latex,
    "xml": gen_xml,
    "code": gen_code,
    "json": gen_json,
    "table": gen_table,
    "repeat": gen_repeat,
}


def _n_spans(rng: random.Random, cfg: MixtureConfig, domain: str) -> int:
    """Long repeated spans in a document: geometric with mean `spans_mean` (none in prose)."""
    if domain == "prose" or cfg.spans_mean <= 0:
        return 0
    p = 1.0 / (1.0 + cfg.spans_mean)
    k = 0
    while rng.random() > p and k < 12:
        k += 1
    return k


def generate_document(index: int, seed: int, cfg: MixtureConfig, lex: Lexicon, domain: str | None = None) -> Document:
    """Document `index` of the mixture with this seed (independent of every other document)."""
    rng = random.Random(seed * 1_000_003 + index)
    if domain is None:
        shares = cfg.normalized_shares()
        domain = rng.choices(DOMAINS, weights=[shares[d] for d in DOMAINS])[0]
    n_spans = _n_spans(rng, cfg, domain)
    target = max(40, int(rng.uniform(0.6, 1.4) * cfg.doc_chars))
    copy = _Copy(rng, cfg, n_spans)
    text = GENERATORS[domain](rng, lex, target, copy)
    return Document(text=text, domain=domain, copy_spans=n_spans)


def generate_documents(n: int, seed: int, cfg: MixtureConfig | None = None, start: int = 0) -> Iterator[Document]:
    """Documents `start .. start+n-1` of the mixture with this seed; same seed, same text."""
    cfg = cfg or MixtureConfig()
    if n < 0:
        raise CurateError(f"number of documents must be non-negative, got {n}")
    lex = Lexicon(cfg.lexicon_size, cfg.zipf_exponent, seed)
    for i in range(start, start + n):
        yield generate_document(i, seed, cfg, lex)
