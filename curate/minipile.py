"""A seeded generator of a Pile-like text mixture (the embedded "mini-Pile").

Seven domains, each document labelled with one of them: `prose` (sentences of Zipfian
pseudo-words), `latex`, `xml` (XML and HTML), `code` (Python and C), `json` (objects and JSON
lines), `table` (markdown / CSV tables and bulleted lists) and `repeat` (meaningless repeated
strings). The structured domains carry long-range EXACT repeats of content that local statistics
cannot guess (fresh random identifiers, hashes, attribute values, labels, names) at varying
distances: the training signal that builds induction heads. How much of it a document carries
varies: a share of documents are strong "catalysts" (long random payloads recurring several
times), the rest carry only short identifier recurrences or none.

The default shares (DEFAULT_SHARES) are 90% `repeat` documents: random material in which one to
several units recur at varying distances, a few runs of one unit said many times. That share is
what makes the default 2-layer model form an induction head within about 1,500 steps on a CPU
(bench/RESULTS.md: at 80% it forms near step 2,700, at 70% or below not within 3,000-4,000 steps);
BALANCED_SHARES is a Pile-like balance for studying the other classes.
"""
from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

from curate.errors import CurateError

DOMAINS: tuple[str, ...] = ("prose", "latex", "xml", "code", "json", "table", "repeat")

DEFAULT_SHARES: dict[str, float] = {
    "prose": 0.02,
    "latex": 0.012,
    "xml": 0.015,
    "code": 0.013,
    "json": 0.02,
    "table": 0.02,
    "repeat": 0.9,
}

# Every class well represented, closer to the Pile's own balance (prose first): for studying the tagger,
# the neighbour index and mixes across classes. The default corpus uses DEFAULT_SHARES, tuned so that the
# default model forms an induction head within minutes on a CPU (bench/RESULTS.md has the measurements).
BALANCED_SHARES: dict[str, float] = {
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
    doc_chars: int = 200  # mean document length in characters (a bit over one 64-token row)
    spans_mean: float = 2.0  # mean number of long repeated spans per structured document (geometric)
    span_tokens: tuple[int, int] = (8, 24)  # length range of a long span, in tokenizer pieces (2 characters each without)
    span_repeats: tuple[int, int] = (2, 2)  # occurrences of each payload
    record_copy_share: float = 0.4  # share of long spans realised as an earlier record copied verbatim
    short_reuse: float = 0.15  # probability that a short identifier slot reuses an earlier one
    run_spans: int = 4  # a `repeat` document with this many spans or more says one unit that many times (up to 6)
    short_period_share: float = 0.0  # share of the filler blocks in `repeat` documents that are short periods
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
        for name in ("span_tokens", "span_repeats"):
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
        out["span_tokens"] = list(self.span_tokens)
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
        self.common = words[: max(50, size // 4)]
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


def _payload(rng: random.Random, n_tokens: int, lex: "Lexicon", pieces: Sequence[str] | None) -> str:
    """A long random value of about `n_tokens` tokens that local statistics cannot guess.

    With `pieces` (the decoded tokens of the corpus tokenizer) it is a run of pieces drawn uniformly,
    so that every token of the vocabulary is copied as often as any other (what the [r, r] probes of
    an induction head test); else a hash, a key, a uuid, a path, a run of names or words."""
    if pieces:
        return "".join(rng.choices(pieces, k=n_tokens))
    n_chars = 2 * n_tokens
    kind = rng.randrange(6)
    if kind == 0:
        return _hex(rng, n_chars)
    if kind == 1:
        return _alnum(rng, n_chars)
    if kind == 2:  # uuid-like groups
        groups: list[str] = []
        while sum(len(g) + 1 for g in groups) < n_chars:
            groups.append(_hex(rng, rng.choice((4, 4, 8, 12))))
        return "-".join(groups)
    if kind == 3:  # a path of random identifiers
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < n_chars:
            parts.append(_identifier(rng))
        return "/".join(parts)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < n_chars:
        if kind == 4:  # a run of random names
            words.append(_name(rng) if rng.random() < 0.5 else _pseudo_word(rng, rng.choice((1, 2, 3))))
        else:  # a run of words drawn uniformly from the common part of the lexicon
            words.append(rng.choice(lex.common))
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

    def __init__(
        self, rng: random.Random, cfg: MixtureConfig, lex: Lexicon, n_spans: int, pieces: Sequence[str] | None,
        record_copy_share: float | None = None,
    ) -> None:
        self.rng = rng
        self.cfg = cfg
        self.pieces = pieces
        self.n_spans = n_spans
        self.payloads: list[str] = []
        self.payload_tokens: list[int] = []
        self.uses: list[int] = []
        self.record_copies = 0
        share = cfg.record_copy_share if record_copy_share is None else record_copy_share
        for _ in range(n_spans):
            if rng.random() < share:
                self.record_copies += 1
            else:
                n_tok = rng.randint(*cfg.span_tokens)
                self.payloads.append(_payload(rng, n_tok, lex, pieces))
                self.payload_tokens.append(n_tok)
                self.uses.append(rng.randint(*cfg.span_repeats))
        self._planned = list(self.uses)

    @property
    def planned(self) -> list[int]:
        return self._planned

    def fresh_noise(self, n: int | None = None) -> str:
        """A short run of `n` (default 2 to 8) fresh random pieces (else printable characters)."""
        n = self.rng.randint(2, 8) if n is None else n
        if self.pieces:
            return "".join(self.rng.choices(self.pieces, k=n))
        return _random_chars(self.rng, 2 * n)

    def pending(self) -> bool:
        return self.record_copies > 0 or any(u > 0 for u in self.uses)

    def slot(self, fresh: Callable[[], str], prob: float = 0.85) -> str:
        """A value slot: a payload with uses left (with probability `prob`), else a fresh value."""
        live = [i for i, u in enumerate(self.uses) if u > 0]
        if live and self.rng.random() < prob:
            started = [i for i in live if self.uses[i] < self.planned[i]]
            i = self.rng.choice(started or live)  # finish a started span first: its copies stay close
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
        if self.record_copies > 0 and records and self.rng.random() < 0.6:
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
def _sentence(rng: random.Random, lex: Lexicon, topic: list[str] | None = None, max_words: int = 14) -> str:
    n = rng.randint(3, max_words)
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
    head = [f"\\section{{{' '.join(lex.sample(rng, rng.randint(1, 3))).title()}}}"]

    def record() -> str:
        r = rng.random()
        if r < 0.35:
            label = copy.slot(lambda: f"eq:{_identifier(rng)}")
            if copy.n_spans:  # compact: the label and its reference close together
                return f"$x_{{{rng.choice('ijkn')}}}$\\label{{{label}}} {' '.join(lex.sample(rng, rng.randint(1, 3)))} \\ref{{{copy.slot(lambda: label)}}}."
            return f"\\begin{{equation}}\\label{{{label}}}\n  {_latex_expr(rng)}\n\\end{{equation}}\nBy \\eqref{{{label}}}, {' '.join(lex.sample(rng, rng.randint(1, 4)))}."
        if r < 0.6:
            return f"{_sentence(rng, lex, max_words=6)} \\cite{{{copy.slot(lambda: _pseudo_word(rng, 2) + str(rng.randint(1980, 2024)))}}}."
        if r < 0.85:
            return f"\\begin{{itemize}}\n  \\item \\texttt{{{copy.slot(lambda: _identifier(rng))}}} {' '.join(lex.sample(rng, rng.randint(1, 3)))}\n\\end{{itemize}}"
        return f"Let ${_latex_expr(rng)}$ and \\textbf{{{copy.slot(lambda: rng.choice(lex.common))}}}."

    return "\n".join(_fill(rng, copy, target, head, record))


_HTML_TAGS = ["div", "span", "section", "article", "p", "li", "td"]


def gen_xml(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """XML records with ids and references, or HTML with links and titles; values recur."""
    ids: list[str] = []
    if rng.random() < 0.5:
        item = _identifier(rng, "camel")

        def record() -> str:
            rid = copy.slot(lambda: copy.short(ids, lambda: _hex(rng, rng.choice((6, 8)))))
            if rng.random() < 0.5:
                return f'<{item} id="{rid}">{copy.slot(lambda: _name(rng))}</{item}>'
            return f'<{item} id="{rid}" ref="{copy.slot(lambda: copy.short(ids, lambda: _hex(rng, 6), 0.6))}"/>'

        return "\n".join(_fill(rng, copy, target, ['<?xml version="1.0"?>'], record))

    def element() -> str:
        tag = rng.choice(_HTML_TAGS)
        href = copy.slot(lambda: "/" + copy.short(ids, lambda: _identifier(rng)))
        if rng.random() < 0.5:
            return f'<{tag}><a href="{href}">{copy.slot(lambda: " ".join(lex.sample(rng, rng.randint(1, 3))))}</a></{tag}>'
        return f'<a href="{href}" title="{copy.slot(lambda: _name(rng))}">'

    return "\n".join(_fill(rng, copy, target, ["<html>"], element))


def gen_code(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """Python or C functions whose names, arguments and constants recur."""
    python = rng.random() < 0.6
    funcs: list[str] = []

    def function() -> str:
        fname = copy.short(funcs, lambda: _pseudo_word(rng, rng.choice((1, 2))), 0.0)
        arg = rng.choice("xyzn") if copy.n_spans else _identifier(rng)
        const = copy.slot(lambda: _alnum(rng, rng.randint(4, 8)))
        if python:
            if rng.random() < 0.5:
                return f"def {fname}({arg}):\n    return {copy.short(funcs, lambda: _identifier(rng), 0.5)}({arg}, \"{const}\")\n"
            return f"{fname.upper()} = \"{const}\"\nassert {arg} != \"{copy.slot(lambda: _alnum(rng, 6))}\""
        ctype = rng.choice(("int", "size_t", "uint32_t", "double"))
        if rng.random() < 0.5:
            return f"static {ctype} {fname}({ctype} {arg}) {{\n    return {copy.short(funcs, lambda: _identifier(rng), 0.5)}(\"{const}\");\n}}"
        return f"#define {fname.upper()} \"{const}\"\n{ctype} {arg} = f(\"{copy.slot(lambda: _alnum(rng, 6))}\");"

    head = ["import " + _identifier(rng)] if python else [f"#include <{rng.choice(('stdio', 'stdlib', 'string', 'stdint'))}.h>"]
    return "\n".join(_fill(rng, copy, target, head, function))


def gen_json(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """An array of records or JSON lines; ids, names and values recur."""
    key = _identifier(rng)
    ids: list[str] = []

    def record() -> str:
        rid = copy.slot(lambda: copy.short(ids, lambda: _hex(rng, 8), 0.2))
        value = f'"{copy.slot(lambda: _pseudo_word(rng, 2))}"' if rng.random() < 0.6 else _number(rng)
        return f'{{"id": "{rid}", "{key}": {value}}}'

    records = _fill(rng, copy, target, [], record)
    if rng.random() < 0.4:
        return "\n".join(records)
    return "[" + ",\n ".join(records) + "]"


def gen_table(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """A markdown table, a CSV file or a bulleted list; codes, names and whole rows recur."""
    kind = rng.randrange(3)
    codes: list[str] = []

    def line() -> str:
        c = [copy.slot(lambda: _name(rng)), copy.slot(lambda: copy.short(codes, lambda: f"{_alnum(rng, 3).upper()}-{rng.randint(100, 9999)}")), _number(rng)]
        if kind == 0:
            return "| " + " | ".join(c) + " |"
        if kind == 1:
            return ",".join(c)
        return f"- **{c[0]}** ({c[1]}): {' '.join(lex.sample(rng, rng.randint(1, 3)))}"

    header = [w.capitalize() for w in lex.sample(rng, 3)]
    if kind == 0:
        head = ["| " + " | ".join(header) + " |", "|---|---|---|"]
    elif kind == 1:
        head = [",".join(h.lower() for h in header)]
    else:
        head = []
    return "\n".join(_fill(rng, copy, target, head, line))


def gen_repeat(rng: random.Random, lex: Lexicon, target: int, copy: _Copy) -> str:
    """Meaningless strings: a dump of random material in which units recur: each unit of the plan
    occurs, then recurs after a gap of fresh material (varying distances); without a plan, noise
    and short periods."""
    sep = "" if copy.pieces else " "
    out: list[str] = []
    size = 0
    units = list(copy.payloads)
    if copy.n_spans >= copy.cfg.run_spans:  # a strong catalyst: one short unit said over and over
        unit = copy.fresh_noise(rng.randint(6, 12))
        units = []
        parts = [copy.fresh_noise(rng.randint(1, 4))]
        while sum(len(x) for x in parts) < target:
            parts += [unit, copy.fresh_noise(rng.randint(0, 2))]
        out.append(sep.join(parts))
        size += len(out[-1])
    while size < target or units:
        if units:
            unit = units.pop(0)
            block = sep.join(
                [copy.fresh_noise(rng.randint(1, 8)), unit, copy.fresh_noise(rng.randint(1, 12)), unit]
            )
        elif rng.random() < copy.cfg.short_period_share:
            unit = rng.choice(("=", "-", "*", "ab", "xo", "#", "~", ".", "lol", "ha", "na", "0"))
            block = rng.choice((" ", "", "\n")).join([unit] * rng.randint(6, 24))
        else:
            block = copy.fresh_noise()
        out.append(block)
        size += len(block)
    return sep.join(out)


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
    mean = cfg.spans_mean / 2 if domain == "repeat" else cfg.spans_mean
    p = 1.0 / (1.0 + mean)
    k = 0
    while rng.random() > p and k < 12:
        k += 1
    return k + 1 if domain == "repeat" else k  # a repeat document always has a long unit


def generate_document(
    index: int, seed: int, cfg: MixtureConfig, lex: Lexicon, domain: str | None = None, pieces: Sequence[str] | None = None
) -> Document:
    """Document `index` of the mixture with this seed (independent of every other document)."""
    rng = random.Random(seed * 1_000_003 + index)
    if domain is None:
        shares = cfg.normalized_shares()
        domain = rng.choices(DOMAINS, weights=[shares[d] for d in DOMAINS])[0]
    n_spans = _n_spans(rng, cfg, domain)
    target = max(40, int(rng.uniform(0.6, 1.4) * cfg.doc_chars))
    copy = _Copy(rng, cfg, lex, n_spans, pieces, record_copy_share=0.0 if domain == "repeat" else None)
    text = GENERATORS[domain](rng, lex, target, copy)
    return Document(text=text, domain=domain, copy_spans=n_spans)


def generate_documents(
    n: int, seed: int, cfg: MixtureConfig | None = None, start: int = 0, pieces: Sequence[str] | None = None
) -> Iterator[Document]:
    """Documents `start .. start+n-1` of the mixture with this seed; same seed (and pieces), same text.

    `pieces`: the strings that long repeated spans are drawn from, uniformly (the default corpus
    passes its tokenizer's tokens, see `copy_pieces`); None: hashes, keys, names and words."""
    cfg = cfg or MixtureConfig()
    if n < 0:
        raise CurateError(f"number of documents must be non-negative, got {n}")
    lex = Lexicon(cfg.lexicon_size, cfg.zipf_exponent, seed)
    for i in range(start, start + n):
        yield generate_document(i, seed, cfg, lex, pieces=pieces)


def copy_pieces(tokens: Sequence[str]) -> list[str]:
    """The decoded tokens that long spans are drawn from: all but empty, whitespace-only and
    line-breaking ones (so spans stay inside their line, attribute or string)."""
    return sorted({t for t in tokens if t and t.strip() and "\n" not in t and "\t" not in t and "\r" not in t})
