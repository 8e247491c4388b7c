r"""Structure tags: a heuristic classifier of a row's text into one structural class.

Labels: the embedded corpus generator's domains, `latex` (documents and macro code: `\def`, `@`-names,
expl3), `xml` (XML/HTML), `code` (with its comments and docstrings), `json` (JSON and records), `table`
(tables and lists), `repeat` (meaningless repeated strings), `prose`, and `troff` (man pages and other
roff markup: request lines `.TH`/`.SH`/`.TP`, escapes `\fB`, `\-`). The classifier reads real format
cues only: backslash commands and math, TeX comments and macro parameters, troff requests and escapes,
markup tags and attributes, quoted keys, programming keywords, statements, comment blocks and
punctuation, delimiter columns and list bullets; for `repeat`, the share of the text covered by
back-to-back repeats, by units that recur at any distance, and signs of random character soup (character classes switching inside
tokens, capitals in odd places, punctuation marks used once each); for `prose`, the share of
running-text tokens. Rows are windows of packed text that may start mid-document and may be short
(a 65-token row is often one or two lines), so every cue is a density over the window, not a
whole-file check.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

EOT_TEXT = "<|endoftext|>"

LABELS: tuple[str, ...] = ("latex", "xml", "code", "json", "table", "repeat", "prose", "troff")

# ---------------------------------------------------------------------------------------------
# cue patterns
# ---------------------------------------------------------------------------------------------
_LATEX_COMMAND = re.compile(r"\\([A-Za-z@]{2,})")  # `\section`, and macro code's `@`-names (`\@tempa`, `\g@addto@macro`)
_LATEX_FOLLOWERS = frozenset("{[_^$\\}() \n\t,.;:~#%=0123456789")
# LaTeX3 (expl3) names: `\cs_new_protected:Npn`, `\l__pkg_name_tl`
_EXPL3 = re.compile(r"\\(?:[A-Za-z]+_[A-Za-z_]*:[A-Za-z]*|[lgc]__?[A-Za-z]\w*)")
_TEX_COMMENT_LINE = re.compile(r"^\s*%|[{}]%\s*$")  # a TeX comment line (`%% Copyright`), or a brace line ending `{%`
_TEX_PARAM = re.compile(r"(?<!&)#{1,2}[1-9]")  # macro parameters `#1` (not `&#192;`, a character reference)
_TEX_CONTROL = re.compile(r"\\[A-Za-z@][A-Za-z@_:]*")  # any control word: not a code keyword, call or identifier
_LATEX_SCRIPT = re.compile(r"[_^]\{")
_LATEX_INLINE_MATH = re.compile(r"\$(?=[^$\n]*[A-Za-z0-9])[A-Za-z0-9\s+\-=*/().,;:<>|!'\\_^{}\[\]&]{1,80}\$")
_LATEX_KNOWN = frozenset(
    """begin end section subsection subsubsection paragraph label ref eqref cite citep citet item
    emph textbf textit texttt mathbf mathrm mathcal mathbb frac sqrt sum prod int left right cdot
    ldots cdots dots leq geq neq approx infty partial alpha beta gamma delta epsilon varepsilon theta
    lambda mu nu pi rho sigma tau phi varphi psi omega Gamma Delta Theta Lambda Sigma Phi Omega
    usepackage documentclass newcommand renewcommand caption includegraphics centering hline
    toprule midrule bottomrule footnote url href maketitle title author date bibliography
    bibliographystyle newtheorem mathit operatorname quad qquad hat bar tilde vec in subset cup cap
    forall exists to mapsto times otimes le ge ll gg sim equiv propto nabla top
    def edef gdef xdef let futurelet expandafter noexpand csname endcsname makeatletter makeatother catcode
    ifx ifnum ifdim ifcase ifdefined ifcsname else fi relax global long outer protected newif advance
    multiply divide begingroup endgroup bgroup egroup newcount newdimen newskip newtoks newbox setbox hbox
    vbox unvbox unhbox the number romannumeral string meaning afterassignment aftergroup ignorespaces
    ProvidesPackage ProvidesFile ProvidesClass RequirePackage NeedsTeXFormat DeclareOption ProcessOptions
    ExecuteOptions PackageError PackageWarning PackageInfo ClassError ClassWarning DeclareRobustCommand
    providecommand newenvironment renewenvironment newlength setlength addtolength newcounter setcounter
    addtocounter stepcounter value z@ p@ m@ne @ne tw@ thr@@ @tempa @tempb @tempcnta @tempdima @tempswatrue
    @tempswafalse @ifundefined @ifnextchar @namedef @nameuse @gobble @firstofone @empty @spaces @ifstar""".split()
)
# troff (man pages): the man/mdoc macros and roff requests a request line may call
_TROFF_MACROS = frozenset(
    """TH SH SS PP LP P TP TQ IP HP RS RE B I BR BI IB IR RB RI SM SB EX EE UR UE MT ME SY YS OP nf fi br sp in ti
    ft ps vs de if ie el ds nr so tr na ad ne bp ce ul ig am rm rn hy nh nx pl ll lt ta tm ev ss cs bd mk rt
    Dd Dt Os Nm Nd Sh Ss Pp Bl El It Fl Ar Op Oo Oc Xr Pa Cm Ic Li Ev Va Fn Ft Fa Fd Fo Fc In Dv Er Bd Ed Ql Dq
    Sq Em Sx No Ns Bk Ek An Ta St Lk Mt Aq Bq Pq Qq Sy Vt Xo Xc Rs Re Ql Db Ux Bx At""".split()
)
# a troff request or macro line (`.TH`, `.SH NAME`, `.TP`, `.B text`) or a comment line (`.\"`, `'\"`)
_TROFF_REQUEST = re.compile(r"^(?:\.([A-Za-z]{1,2})(?:\s|$)|[.']\\\")")
# troff inline escapes: fonts `\fB` `\f(CW` `\f[B]`, special characters `\(em` `\[em]`, strings `\*(` `\*[`,
# `\-`, `\e`, `\&.`, sizes `\s-1` (not LaTeX's `\(`, `\&`, `\|`, `\^`, nor `\end`)
_TROFF_ESCAPE = re.compile(r"\\(?:f[BIRPC1-4]|f\(\w\w|f\[\w*\]|\([A-Za-z][A-Za-z]|\[\w+\]|\*[(\[]?\w|-|e(?![A-Za-z])|&(?=\.)|s[-+]?\d)")
_XML_TAG = re.compile(
    r"<(?:[?!][^<>]{0,200}|/?[A-Za-z_][\w:.-]*(?:\s+[\w:.-]+(?:\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'|[^\s<>\"']+))?)*\s*/?)>"
)
# a tag cut by the window edge: "...class="x">" at the start or "<div clas" at the end
_XML_EDGE = re.compile(r"(?:^[^<>]*\"\s*/?>)|(?:<[A-Za-z/][\w:.-]*(?:\s[^<>]*)?$)")
# an attribute opening inside a tag (name=" after a space), also when the window cut the tag's `<`
_XML_ATTR = re.compile(r"(?<=[ \t])[A-Za-z_][\w:.-]*=\"")
_XML_ENTITY = re.compile(r"&(?:[A-Za-z]{2,8}|#\d{2,5});")
# a key opens after `{`, `[`, `,` or whitespace (not glued to other text: `x%":` is no key)
_JSON_KEY = re.compile(r"(?:(?<=[{\[,\s])|^)\"[^\"\n]{1,80}\"\s*:(?!:)")
_JSON_LITERAL = re.compile(r":\s*(?:true|false|null|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|\"[^\"\n]*\")\s*[,}\]]")
_CODE_KEYWORDS = frozenset(
    """def return import from class elif else for while try except raise yield lambda self None True
    False pass with async await const let var function void int char float double long unsigned
    static struct typedef include define public private protected new null nullptr sizeof switch case
    break continue namespace package func fn impl pub mut match enum interface extends implements
    throw throws catch finally bool boolean string size_t uint32_t uint8_t int64_t auto template
    typename println printf fprintf malloc free std fi esac elif echo export assert""".split()
)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"[A-Za-z_][\w.]*\s?\(")
_CODE_OPERATOR = re.compile(r"==|!=|<=|>=|->|=>|\+=|-=|\*=|&&|\|\||::|\+\+|--(?=[A-Za-z_;)])|<<|>>")
_SHELL_VAR = re.compile(r"\$\{\w+\}|\$\(|\$[A-Z_][A-Z0-9_]{2,}\b|\"\$\w+")
_CLI_OPTION = re.compile(r"(?<=\s)--[a-z][\w-]+")  # a command-line option: `--batch-size`
_ASSIGN = re.compile(r"[\w\])]\s*=\s*[^=\s]")
_CODE_LINE_END = re.compile(r"[;{}]\s*$|\)\s*:\s*$|^\s*(?:else|try|finally)\s*:\s*$")
_CODE_COMMENT = re.compile(r"^\s*(?://|/\*|\*\s|#!|#\s*(?:include|define|undef|ifn?def|if|elif|else|endif|pragma|error)\b)")
# a line of a C-style comment block (`/*`, ` * text`, ` */`, `//`)
_DOCSTRING_MARK = re.compile(r"\"\"\"|'''|^\s*>>> \S", re.M)  # Python docstring quotes, a doctest prompt
_C_COMMENT_EDGE = re.compile(r"/\*|\*/|^\s*\*\s*$")  # a comment block's opening, closing or empty ` *` line
_C_COMMENT_LINE = re.compile(r"^\s*(?:/\*|\*(?:\s|/|\*|$)|//|#(?:\s|$))")  # and a `# comment` line
# lines that open like code: imports, definitions, decorators, assignments, shell commands with options,
# returns, asserts
_CODE_LINE_START = re.compile(
    r"^\s*(?:import\s+[\w.]+|from\s+[\w.]+\s+import\b|def\s+\w+\s*\(|class\s+\w+\s*[(:{]|@\w[\w.]*(?:\(|$)"
    r"|(?:[A-Za-z_]\w*\s+){0,2}[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?\s*[-+*/|&]?=\s*[^=\s]"  # an assignment statement
    r"|[a-z][\w.-]*\s+(?:[^\s-]\S*\s+){0,3}--?[A-Za-z][\w-]*"  # a shell command with options
    r"|return\b|assert\s|package\s+[\w.]+;|using\s+[\w.:]+;|(?:public|private|protected)\s+\w+|fn\s+\w+\s*\(|func\s+\w+\s*\()"
)
_SNAKE_OR_CAMEL = re.compile(r"\b[a-z]+(?:_[a-z0-9]+)+\b|\b[a-z]+(?:[A-Z][a-z0-9]+)+\b")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)])\s+\S")
_OPTION_ITEM = re.compile(r"^\s+-{1,2}[A-Za-z0-9][\w-]*(?:[ ,=\[]|$)")
# a column gap: 2+ spaces or a tab between two cells (not the two spaces after a sentence, nor the gap before a
# comment box's closing `*`)
_ALIGNED_COLUMNS = re.compile(r"[^\s.!?:;,)](?: {2,}|\t)(?![*]/?\s*$)\S")
_SENTENCE_END = re.compile(r"[a-z][.!?](?:\s|$)")

# a token of running text: words (capitalised or acronyms), numbers (with a short unit), joined by
# ' - / ("don't", "well-known", "and/or", "2,049-token", "rows/s"), in optional brackets, quotes, emphasis
_NATURAL_PART = r"(?:[A-Za-z][a-z]*|[A-Z]{2,}s?|\d+(?:[.,:]\d+)*(?:%|[A-Za-z]{1,2})?)"
_NATURAL_TOKEN = re.compile(
    rf"[(\"'\[`*_]{{0,3}}{_NATURAL_PART}(?:['\u2019/-]{_NATURAL_PART})*[,.;:!?)\"'\]`*_]{{0,3}}"
)
# capitals where no writing system puts them: "mGC", "4T", "T9" (camelCase "fooBar" and "Foo" are fine)
_ODD_CASE = re.compile(r"[a-z0-9][A-Z](?=[A-Z0-9]|[^\w\s])|[0-9][A-Z]|[A-Z][0-9]")

_PUNCTUATION = frozenset(string.punctuation)

# character classes for the junk cue: 0 whitespace, 1 lower-case letter (and non-ASCII bytes),
# 2 capital, 3 digit, 4 punctuation
_CHAR_CLASS = np.full(256, 1, dtype=np.int8)
_CHAR_CLASS[[ord(ch) for ch in string.whitespace]] = 0
_CHAR_CLASS[[ord(ch) for ch in string.ascii_uppercase]] = 2
_CHAR_CLASS[[ord(ch) for ch in string.digits]] = 3
_CHAR_CLASS[[ord(ch) for ch in string.punctuation]] = 4

LIST_CONTINUATION_MAX = 50  # characters of an indented line that continues a list item
REPEAT_MAX_PERIOD = 128
REPEAT_SHARE = 0.45  # repeat-covered share at which `repeat` competes with the format evidence (score 1.0)
REPEAT_DOMINANT = 0.85 / REPEAT_SHARE  # repeat score that wins over a format score below FORMAT_CLEAR
FORMAT_CLEAR = 1.2  # format score that wins over a moderate repeat share and moderate junk
FORMAT_STRONG = 3.0  # format score that wins over any repeat share and any junk
FORMAT_WEAK = 0.7  # format score that names a window with no junk and no back-to-back repeats
REPEAT_MIN_RUN = 16  # at a window edge, a copy of a long unit counts once 13+ of its characters show
RECUR_MIN = 12  # a recurring unit (at any distance): 12+ characters seen twice in the window
RECUR_SHARE = 0.3  # recurring share above which a window is not running text
RECUR_SHARE_WORDS = 0.7  # the same for a window made only of words (NATURAL_ONLY)
NATURAL_ONLY = 0.95
NATURAL_SHARE = 0.7  # share of running-text tokens above which a window without format is prose
NATURAL_MIN = 0.5  # below it, a window with neither format nor junk is meaningless material (`repeat`)
# junk: random character soup (punctuation and capitals anywhere, each punctuation mark used once)
JUNK_ALTERNATION = 0.2  # class switches (letter / capital / digit / punctuation) per character inside tokens
JUNK_ODD_CASE = 4.0  # odd capitals per 100 characters
JUNK_SINGLETONS = 6.0  # punctuation characters used exactly once in the window (or in 150 characters of it)
JUNK_SINGLETON_CHARS = 150
JUNK_SOME = 2.0  # junk score at which a window without clear format is `repeat`
JUNK_MUCH = 3.0  # junk score at which a window with only moderate format evidence is `repeat`


@dataclass(frozen=True)
class TextCues:
    """Format cues of one text, each a density (per 100 characters) or a share in [0, 1]."""

    chars: int
    latex_commands: float  # backslash commands (unknown ones and {_,^}{ scripts count half) per 100 chars
    latex_known: int  # number of well-known LaTeX commands
    latex_math: float  # inline $...$ spans per 100 chars
    tex_comment_share: float  # share of lines that are TeX comments or end a brace with `%`
    troff_request_share: float  # share of lines that are troff requests or macro calls (`.SH`, `.TP`, `.\"`)
    troff_escapes: float  # troff inline escapes (`\fB`, `\-`, `\(em`) per 100 chars
    xml_tag_share: float  # share of characters inside markup tags
    xml_tags: float  # tags per 100 chars
    xml_attrs: float  # attribute openings ( name=" ) per 100 chars
    json_keys: float  # "key": per 100 chars
    json_literals: float  # : value, per 100 chars
    code_keywords: float  # programming keywords per 100 chars
    code_symbols: float  # calls, operators, assignments per 100 chars
    code_line_share: float  # share of lines that end like code (; { } ):), open like code or are directives
    code_open_share: float  # share of lines that open like code or are directives and comments
    indent_share: float  # share of lines indented by 2+ spaces or a tab
    comment_share: float  # share of lines in a comment block (`/*`, ` * `, `//`, `# `)
    docstring_marks: int  # Python docstring quotes and doctest prompts
    identifier_share: float  # share of words that are snake_case / camelCase
    pipe_line_share: float  # share of lines that are delimited table rows ( | a | b | )
    spaced_pipe_row: bool  # some line has 2+ cell separators " | " (a table row even when alone)
    csv_line_share: float  # share of lines with the modal (>= 2) count of commas / tabs / semicolons
    list_line_share: float  # share of lines that are bullet, numbered or option items
    aligned_line_share: float  # share of lines with 2+-space column gaps inside
    table_line_share: float  # share of lines that are any of the four above
    repeat_share: float  # share of characters inside back-to-back repeats of a unit (duplicated table rows aside)
    recur_share: float  # share of characters inside a unit of 12+ characters that recurs anywhere in the window
    natural_share: float  # share of the non-space characters in running-text tokens (words, numbers)
    alternation: float  # character-class switches per character inside tokens (letter/digit switches aside)
    odd_case: float  # capitals in odd places per 100 chars
    punct_singletons: int  # ASCII punctuation characters that occur exactly once
    word_share: float  # share of characters in alphabetic words
    sentence_ends: float  # sentence endings per 100 chars
    punct_variety: int  # distinct ASCII punctuation characters
    lines: int


def _tandem_repeat_share(text: str, max_period: int = REPEAT_MAX_PERIOD) -> float:
    """Share of characters covered by back-to-back copies of a unit (period 1..max_period).

    A stretch where s[i] == s[i + p] for (about) p consecutive i is two adjacent copies of a
    p-character unit; a separator of up to 3 characters may differ, and a copy cut by the window
    edge needs only min(p, 16) - 3 characters. Units made only of whitespace (indentation) do not
    count, nor runs of one repeated character shorter than 6. All periods at once, vectorised.
    """
    data = np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)
    n = len(data)
    if n < 8:
        return 0.0
    periods = np.arange(1, min(max_period, n - 3) + 1)
    num_p = len(periods)
    # eq[k, i] = data[i] == data[i + p_k]  (False past the end)
    idx = np.arange(n)[None, :] + periods[:, None]
    eq = np.zeros((num_p, n + 2), dtype=bool)
    inside = idx < n
    eq[:, 1 : n + 1] = inside & (data[np.minimum(idx, n - 1)] == data[None, :])
    flat = np.diff(eq.astype(np.int8), axis=1)  # +1 at run starts, -1 at run ends (exclusive), per period
    p_start, starts = np.nonzero(flat == 1)
    _, ends = np.nonzero(flat == -1)
    if len(starts) == 0:
        return 0.0
    p = periods[p_start]  # runs come out in the same (period, position) order for starts and ends
    lengths = ends - starts
    need = np.where(p == 1, 6, np.where(p == 2, 4, np.maximum(3, p - 3)))
    need_cut = np.where(p == 1, 6, np.where(p == 2, 4, np.maximum(3, np.minimum(p, REPEAT_MIN_RUN) - 3)))
    at_edge = (starts == 0) | (ends == n - p)
    keep = (lengths >= need) | (at_edge & (lengths >= need_cut))
    # drop whitespace-only units (the first period of the run is the unit)
    is_space = (data == 32) | (data == 10) | (data == 9) | (data == 13)
    space_prefix = np.concatenate([[0], np.cumsum(is_space)])
    unit_end = np.minimum(starts + p, n)
    keep &= (space_prefix[unit_end] - space_prefix[starts]) < (unit_end - starts)
    starts, ends, p = starts[keep], ends[keep], p[keep]
    if len(starts) == 0:
        return 0.0
    # both copies: [start, end) and [start + p, end + p)
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    np.add.at(delta, np.minimum(starts + p, n), 1)
    np.add.at(delta, np.minimum(ends + p, n), -1)
    return float((np.cumsum(delta[:n]) > 0).sum()) / n


def _recurring_share(text: str, k: int = RECUR_MIN) -> float:
    """Share of characters covered by a k-character unit that occurs again at least k characters
    later (a recurrence at any distance, not only back to back); units without a letter or digit
    (rules, indentation) do not count."""
    n = len(text)
    if n < 2 * k:
        return 0.0
    first: dict[str, int] = {}
    covered = np.zeros(n + 1, dtype=np.int32)
    hit = False
    for i in range(n - k + 1):
        unit = text[i : i + k]
        j = first.setdefault(unit, i)
        if i - j >= k and not unit.isspace() and any(ch.isalnum() for ch in unit):
            covered[i] += 1
            covered[i + k] -= 1
            covered[j] += 1
            covered[j + k] -= 1
            hit = True
    if not hit:
        return 0.0
    return float((np.cumsum(covered[:n]) > 0).sum()) / n


def _class_alternation(text: str) -> float:
    """Switches between character classes (lower-case, capital, digit, punctuation) per non-space
    character, inside whitespace-separated tokens; letter/digit switches (hashes, ids) do not count.
    Words and identifiers switch rarely, random character soup about every other character."""
    cls = _CHAR_CLASS[np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)]
    a, b = cls[:-1], cls[1:]
    inside = (a != 0) & (b != 0)
    letter_digit = ((a == 1) & (b == 3)) | ((a == 3) & (b == 1))
    switches = int(np.count_nonzero(inside & (a != b) & ~letter_digit))
    return switches / max(int(np.count_nonzero(cls)), 1)


def _natural_share(text: str) -> float:
    """Share of non-space characters in tokens of running text (words, numbers)."""
    tokens = text.split()
    total = sum(len(t) for t in tokens)
    if not total:
        return 0.0
    return sum(len(t) for t in tokens if _NATURAL_TOKEN.fullmatch(t)) / total


def _delimited_lines(lines: Sequence[str], max_cell: float = 30.0) -> list[bool]:
    """Lines carrying the most common count (>= 2) of one delimiter (, ; or tab), with short cells
    (in a window of two lines, cells that do not open with a space)."""
    best = [False] * len(lines)
    if len(lines) < 2:
        return best
    for delim in (",", "\t", ";"):
        counts = [line.count(delim) if len(line) <= max_cell * (line.count(delim) + 1) else 0 for line in lines]
        if delim != "\t":  # clauses of running text are no cells: three words a cell on average, or two
            # when every delimiter is followed by a space ("implied, including, without limitation, any")
            counts = [
                c if len(line.split()) < (2 if line.count(delim + " ") == c else 3) * (c + 1) else 0
                for c, line in zip(counts, lines)
            ]
        if len(lines) == 2 and delim != "\t":  # two lines only: prose clauses (", ") are no cells
            counts = [c if line.count(delim + " ") * 2 < c else 0 for c, line in zip(counts, lines)]
        hist = Counter(c for c in counts if c >= 2)
        if hist:
            # lines with the modal count, or one fewer/more (a row cut by the window edge)
            mode, _ = hist.most_common(1)[0]
            flags = [c >= 2 and abs(c - mode) <= 1 for c in counts]
            if sum(flags) > sum(best):
                best = flags
    return best


def _pipe_row(line: str) -> bool:
    """A table row delimited by `|` whose cells are not all the same (or a |---|---| rule)."""
    if line.count("|") < 2:
        return False
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    cells = [c for c in cells if c]
    return len(set(cells)) >= 2 or bool(cells and set(cells[0]) <= set("-:= "))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _list_lines(lines: Sequence[str]) -> list[bool]:
    """Lines that are list items (bullets, numbers, command-line options) or their indented continuations."""
    flags = []
    item_indent: int | None = None
    for line in lines:
        if _LIST_ITEM.match(line) or _OPTION_ITEM.match(line):
            flags.append(True)
            item_indent = _indent(line)
        elif item_indent is not None and _indent(line) > item_indent and len(line.strip()) < LIST_CONTINUATION_MAX:
            flags.append(True)  # a short continuation (a long one is a paragraph of running text)
        else:
            flags.append(False)
            item_indent = None
    return flags


def _row_like(line: str) -> bool:
    """A line that is a record on its own: a table row, a list item, or a delimited record."""
    return bool(
        _pipe_row(line) or _LIST_ITEM.match(line) or _OPTION_ITEM.match(line) or line.count(",") >= 2 or line.count("\t") >= 2
    )


def _collapse_duplicate_rows(text: str) -> str:
    """Drop lines that repeat the line before them when that line is a table row or list item:
    duplicated records are structure (a table with a repeated row), not meaningless repetition."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    previous = None
    for i, line in enumerate(lines):
        key = line.strip()
        last = i == len(lines) - 1
        # the last line may be a copy cut by the window's end
        if key and previous and _row_like(previous) and (key == previous or (last and previous.startswith(key))):
            continue
        out.append(line)
        previous = key if key else previous
    # the first line may be a copy cut by the window's start
    if len(out) >= 2:
        first, second = out[0].strip(), out[1].strip()
        if first and second.endswith(first) and _row_like(second):
            out = out[1:]
    return "".join(out)


def text_cues(text: str) -> TextCues:
    """Measure the format cues of one text."""
    n = max(len(text), 1)
    per100 = 100.0 / n
    lines = [line for line in text.splitlines() if line.strip()]
    n_lines = max(len(lines), 1)

    known = unknown = 0
    for m in _LATEX_COMMAND.finditer(text):
        if m.group(1) in _LATEX_KNOWN:
            known += 1
        elif m.end() == len(text) or text[m.end()] in _LATEX_FOLLOWERS:
            unknown += 1  # a user macro: counts half, and only when followed like a command
    expl3 = len(_EXPL3.findall(text))
    known += expl3 // 2  # two LaTeX3 names are as good as one well-known command
    params = len(_TEX_PARAM.findall(text))
    latex_cmds = known + 0.5 * (unknown + expl3 + params) + 0.5 * len(_LATEX_SCRIPT.findall(text))
    troff_lines = 0
    for line in lines:
        m = _TROFF_REQUEST.match(line)
        troff_lines += bool(m and (m.group(1) is None or m.group(1) in _TROFF_MACROS))
    troff_escapes = len(_TROFF_ESCAPE.findall(text))
    tags = _XML_TAG.findall(text)
    entities = _XML_ENTITY.findall(text)  # markup too: a run of `&#192;&#224;` is an XML/HTML character table
    tag_chars = sum(len(t) for t in tags) + sum(len(m) for m in _XML_EDGE.findall(text)) + sum(len(e) for e in entities)
    n_tags = len(tags) + len(entities)

    words = _WORD.findall(text)
    # TeX control words (`\def`, `\else`, `\fi`) are no code keywords, calls or identifiers
    plain = _TEX_CONTROL.sub(" ", text) if "\\" in text else text
    plain_words = _WORD.findall(plain) if plain is not text else words
    keywords = sum(1 for w in plain_words if w in _CODE_KEYWORDS)
    idents = len(_SNAKE_OR_CAMEL.findall(plain))
    code_syms = (
        len(_CALL.findall(plain)) + len(_CODE_OPERATOR.findall(plain)) + len(_ASSIGN.findall(plain))
        + len(_SHELL_VAR.findall(plain)) + len(_CLI_OPTION.findall(plain))
    )
    code_like = [
        bool(_CODE_LINE_END.search(line) or _CODE_COMMENT.search(line) or _CODE_LINE_START.match(line)) for line in lines
    ]
    code_lines = sum(code_like)
    code_open = sum(1 for line in lines if _CODE_COMMENT.search(line) or _CODE_LINE_START.match(line))
    indented = sum(1 for line in lines if line.startswith(("  ", "\t")))
    pipe_rows = [_pipe_row(line) for line in lines]
    # a statement, directive or comment-block line with its value or comment lined up (`#define X    1`,
    # `X = 4   # bytes`, ` * text    *`, `#  name:   text`) is code, not a table row (a `|`-delimited row stays a table row)
    in_comment_block = any(_C_COMMENT_EDGE.search(line) for line in lines)
    not_code = [
        not (c or line.lstrip().startswith("# ") or (in_comment_block and _C_COMMENT_LINE.match(line)))
        for c, line in zip(code_like, lines)
    ]
    delimited = [f and ok for f, ok in zip(_delimited_lines(lines), not_code)]
    listed = [f and ok for f, ok in zip(_list_lines(lines), not_code)]
    aligned = [bool(_ALIGNED_COLUMNS.search(line.strip())) and ok for line, ok in zip(lines, not_code)]
    tabular = sum(any(f) for f in zip(pipe_rows, delimited, listed, aligned))
    word_chars = sum(len(w) for w in words)
    punct_counts = Counter(ch for ch in text if ch in _PUNCTUATION)

    return TextCues(
        chars=len(text),
        latex_commands=latex_cmds * per100,
        latex_known=known,
        latex_math=len(_LATEX_INLINE_MATH.findall(text)) * per100,
        tex_comment_share=sum(1 for line in lines if _TEX_COMMENT_LINE.search(line)) / n_lines,
        troff_request_share=troff_lines / n_lines,
        troff_escapes=troff_escapes * per100,
        xml_tag_share=min(1.0, tag_chars / n),
        xml_tags=n_tags * per100,
        xml_attrs=len(_XML_ATTR.findall(text)) * per100,
        json_keys=len(_JSON_KEY.findall(text)) * per100,
        json_literals=len(_JSON_LITERAL.findall(text)) * per100,
        code_keywords=keywords * per100,
        code_symbols=code_syms * per100,
        code_line_share=code_lines / n_lines,
        code_open_share=code_open / n_lines,
        indent_share=indented / n_lines,
        comment_share=sum(1 for line in lines if _C_COMMENT_LINE.match(line)) / n_lines,
        docstring_marks=len(_DOCSTRING_MARK.findall(text)),
        identifier_share=idents / max(len(words), 1),
        pipe_line_share=sum(pipe_rows) / n_lines,
        spaced_pipe_row=any(ok and line.count(" | ") >= 2 for ok, line in zip(pipe_rows, lines)),
        csv_line_share=sum(delimited) / n_lines,
        list_line_share=sum(listed) / n_lines,
        aligned_line_share=sum(aligned) / n_lines,
        table_line_share=tabular / n_lines,
        repeat_share=_tandem_repeat_share(_collapse_duplicate_rows(text)),
        recur_share=_recurring_share(text),
        natural_share=_natural_share(text),
        alternation=_class_alternation(text),
        odd_case=len(_ODD_CASE.findall(text)) * per100,
        punct_singletons=sum(1 for v in punct_counts.values() if v == 1),
        word_share=word_chars / n,
        sentence_ends=len(_SENTENCE_END.findall(text)) * per100,
        punct_variety=len(punct_counts),
        lines=len(lines),
    )


# ---------------------------------------------------------------------------------------------
# decision
# ---------------------------------------------------------------------------------------------
def class_scores(c: TextCues) -> dict[str, float]:
    """Evidence for each structured class, in units of its decision threshold (>= 1 means present)."""
    scores = {
        # `$...$` and user macros alone are weak (junk has dollars and backslashes): a real LaTeX
        # window shows at least one well-known command
        "latex": max(
            max(c.latex_commands / 1.0 + c.latex_math / 0.6, c.latex_known / 2.0)
            if c.latex_known >= 1 or c.latex_commands * c.chars / 100 >= 4  # or four user macros
            else min(0.65, c.latex_commands / 1.0 + c.latex_math / 0.6),
            c.tex_comment_share / 0.5 if c.lines >= 2 else 0.0,  # most lines `%` comments: a TeX source's header
        ),
        # attributes alone (a window inside a long tag, one `name="value"` a line) go up to FORMAT_STRONG
        "xml": max(min(c.xml_tag_share / 0.2, c.xml_tags / 0.8), min(c.xml_attrs / 1.2, FORMAT_STRONG)),
        # a request line in ten, or an escape per 170 characters
        "troff": max(c.troff_request_share / 0.1, c.troff_escapes / 0.6),
        "json": min(c.json_keys / 0.8, (c.json_keys + c.json_literals) / 1.2),
        "code": max(
            (
                min(c.code_keywords / 0.8, 2.0)
                + min(c.code_symbols / 0.8, 2.0)
                + min(c.code_line_share / 0.25, 2.0)
                + min(c.identifier_share / 0.15, 2.0)
                + min(c.indent_share / 0.3, 1.0)
            )
            / 4.0,
            1.5 * c.comment_share if c.lines >= 2 else 0.0,  # a source file's comment block
            1.0 if c.docstring_marks else 0.0,  # a docstring's running text
        ),
        # one line alone is a table row only when it is a delimited row or a list item
        "table": (c.table_line_share / 0.5)
        if c.lines >= 2
        else 0.8 * float(c.spaced_pipe_row or c.list_line_share == 1.0),
        "repeat": c.repeat_share / REPEAT_SHARE,
    }
    return scores


def junk_score(c: TextCues) -> float:
    """Evidence of random character soup (>= JUNK_SOME: some, >= JUNK_MUCH: much): character classes
    switching inside tokens, capitals in odd places, many punctuation marks used once each."""
    singletons = c.punct_singletons * min(1.0, JUNK_SINGLETON_CHARS / max(c.chars, 1))  # per 150 chars at most
    return c.alternation / JUNK_ALTERNATION + c.odd_case / JUNK_ODD_CASE + singletons / JUNK_SINGLETONS


def tag_text(text: str) -> str:
    """The structural class of one text (a row's main document, or any snippet)."""
    if EOT_TEXT in text:
        parts = text.split(EOT_TEXT)
        text = max(parts, key=len)
    if not text.strip():
        return "prose"
    cues = text_cues(text)
    scores = class_scores(cues)
    repeat = scores.pop("repeat")
    label, best = max(scores.items(), key=lambda kv: kv[1])
    junk = junk_score(cues)
    if best >= FORMAT_STRONG:  # e.g. JSON records duplicated back to back are still JSON
        return label
    # mostly back-to-back repeats: `repeat`, unless a clear format explains them
    # (code repeats identifiers, tables repeat rows and separators)
    if repeat >= REPEAT_DOMINANT and best < FORMAT_CLEAR:
        return "repeat"
    if best >= 1.0:
        # a format's marks scattered in random character soup are no format
        return "repeat" if junk >= JUNK_MUCH and best < FORMAT_CLEAR else label
    # no clear format: running text, meaningless material, or a short piece of a format; comments and
    # docstrings of a source file read as running text, but a code line among them names the file
    if label == "code" and best >= FORMAT_WEAK and cues.code_open_share >= 0.15 and junk < JUNK_MUCH:
        return label
    # running text; real text repeats its phrases ("this list of conditions"), so text made only of words may
    # recur more
    recur_limit = RECUR_SHARE_WORDS if cues.natural_share >= NATURAL_ONLY else RECUR_SHARE
    if cues.natural_share >= NATURAL_SHARE and cues.recur_share < recur_limit and junk < JUNK_SOME:
        return "prose"
    if repeat >= 1.0 or junk >= JUNK_SOME:
        return "repeat"
    if best >= FORMAT_WEAK:
        return label
    # neither words nor format: material whose units recur (ids, hashes, soup) is `repeat`
    if cues.recur_share >= RECUR_SHARE or repeat >= 0.5 or cues.natural_share < NATURAL_MIN:
        return "repeat"
    return "prose"


def main_segment(row: np.ndarray, eot_id: int | None) -> np.ndarray:
    """The tokens of the document that supplies most of a packed row, without end-of-text tokens.

    Same rule as `curate.tokenize.main_document`: each end-of-text token belongs to the document it
    ends, ties go to the earlier document.
    """
    row = np.asarray(row)
    if eot_id is None:
        return row
    cuts = np.flatnonzero(row == eot_id)
    if len(cuts) == 0:
        return row
    bounds = np.concatenate([[0], cuts + 1, [len(row)]])
    lengths = np.diff(bounds)
    i = int(np.argmax(lengths))
    seg = row[bounds[i] : bounds[i + 1]]
    return seg[seg != eot_id]


def tag_rows(rows: np.ndarray, tokenizer) -> list[str]:
    """Structural class of each token row: decode its main document (a `TextTokenizer`) and tag the text."""
    eot = getattr(tokenizer, "eot_id", None)
    return [tag_text(tokenizer.decode(main_segment(r, eot))) for r in np.asarray(rows)]


FORMAT_LABELS: tuple[str, ...] = ("latex", "xml", "code", "json", "troff")
"""Classes that name a file format; prose, tables and repeats also occur inside files of every format."""
DOCUMENT_FORMAT_SHARE = 0.15
"""The share of a document's rows a format class needs to name the whole document (chosen on the tuning half of
`bench/tagger.py`'s real files; bench/RESULTS.md)."""
DOCUMENT_FORMAT_SHARES: dict[str, float] = {"xml": 0.03}
"""Lower shares for the classes whose row tag is rarely wrong: on the tuning half no document of another kind had
more than 1.2% of its rows tagged xml, while an SVG of path data or an HTML file list shows markup in a few rows only."""


def vote_by_document(tags: Sequence[str], doc_ids: Sequence[int], format_share: float | None = None) -> list[str]:
    """Each row's document label: a format class of the document when it covers at least its share of the
    document's rows (`DOCUMENT_FORMAT_SHARES`, else `DOCUMENT_FORMAT_SHARE`, or `format_share` for every class)
    -- the most common such class; a docstring or a translated paragraph is still part of a source or an XML file
    -- else the document's most common tag. Ties go to the class seen first in row order."""
    counts: dict[int, Counter] = {}
    for d, t in zip(doc_ids, tags):
        counts.setdefault(int(d), Counter())[t] += 1  # a Counter keeps first-seen order among equal counts
    label: dict[int, str] = {}
    for d, c in counts.items():
        rows = sum(c.values())
        formats = [t for t in c if t in FORMAT_LABELS and c[t] >= _format_share(t, format_share) * rows]
        label[d] = max(formats, key=lambda t: c[t]) if formats else c.most_common(1)[0][0]  # max keeps the first of equal counts
    return [label[int(d)] for d in doc_ids]


def _format_share(label: str, override: float | None) -> float:
    return override if override is not None else DOCUMENT_FORMAT_SHARES.get(label, DOCUMENT_FORMAT_SHARE)
