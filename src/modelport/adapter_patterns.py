"""PEFT's module patterns (``rank_pattern``/``alpha_pattern`` keys, a string ``target_modules``), checked
so that evaluating them costs bounded time, then matched exactly as PEFT matches them.

Why a restricted language and not a linear-time engine: PEFT itself evaluates these patterns with
Python's backtracking ``re`` (``re.match(rf"(.*\\.)?({key})$", module)``) when admission loads the
adapter, and a second engine (RE2) could disagree with it at the edges. So the same check guards
both places: validation refuses a pattern outside the language at upload, and the serving engine
refuses it again at load (adapters stored before the check existed). Inside the language Python's
``re`` is fast *and* gives PEFT's answer, because it is PEFT's own expression.

The language covers what real adapters use (plain module names such as ``q_proj`` or
``model.layers.3.mlp.up_proj``, simple alternations such as ``(q|k|v)_proj``, ``^`` anchors, a ``\\d+``):
literal characters, ``.``, escapes of punctuation and ``\\d \\w \\s``, character classes, anchors,
groups ``( )`` / ``(?: )`` with ``|``. A quantifier (``? * + {m,n}``) may follow only a single
character, never a group, so nothing repeats something that can itself vary: no nested quantifiers,
the source of exponential backtracking. The *ambiguity* that remains (how many ways the pattern can
try to match) is counted - a quantifier counts for every length it may take, a group for the sum
of its branches, a sequence for the product of its parts - and must stay below ``MAX_PATHS``;
backreferences, lookarounds and inline flags are refused. Matching a module name then costs at most
about (dots in the name + 1) x paths backtracking steps (measured: under 80 ns each), and an
adapter's whole table, over all its module names, may cost ``MAX_STEPS``: about 0.15 s at worst.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_PATTERN_CHARS = 512
MAX_MODULE_CHARS = 256  # real module names are under 100 characters
MAX_PATHS = 1024
MAX_REPEAT = MAX_MODULE_CHARS  # a quantifier counts for every length it could take in a module name
MAX_STEPS = 1 << 21  # per adapter: sum over module names of (dots + 1) x (paths of every pattern)

_META = set(".^$*+?{}[]\\|()")
_ESCAPABLE = set(".^$*+?{}[]\\|()-_/:#&~<>=!,;'\"@%` ") | set("dwsDWS")
_QUANTIFIER = re.compile(r"\?|\*|\+|\{(\d{1,4})(?:(,)(\d{0,4}))?\}")
_PLAIN = re.compile(r"[A-Za-z0-9_\-.]+")  # literal characters and '.', which PEFT reads as "any character"


class UnsafePattern(ValueError):
    """A pattern outside the language: the message says what to change."""


class _Parser:
    """A recursive-descent reading of the language, computing the pattern's ambiguity as it goes."""

    def __init__(self, pattern: str) -> None:
        self.text, self.at = pattern, 0

    def parse(self) -> int:
        paths = self._alternation()
        if self.at != len(self.text):
            raise UnsafePattern(f"unbalanced ')' at position {self.at}")
        return paths

    def _alternation(self) -> int:
        total = self._sequence()
        while self._peek() == "|":
            self.at += 1
            total += self._sequence()
        return total

    def _sequence(self) -> int:
        product = 1
        while self._peek() not in ("", "|", ")"):
            product = min(product * self._piece(), MAX_PATHS + 1)
        return product

    def _piece(self) -> int:
        c = self._peek()
        if c == "(":
            paths = self._group()
            if self._quantifier() is not None:
                raise UnsafePattern("a quantifier after a group (nested repetition); repeat single characters only")
            return paths
        if c in ("^", "$"):
            self.at += 1
            return 1
        self._single()
        repeats = self._quantifier()
        return repeats if repeats is not None else 1

    def _group(self) -> int:
        self.at += 1
        if self.text.startswith("?", self.at):
            if not self.text.startswith("?:", self.at):
                raise UnsafePattern("lookarounds, named groups and inline flags are not allowed; use ( ) or (?: )")
            self.at += 2
        paths = self._alternation()
        if self._peek() != ")":
            raise UnsafePattern("a '(' is not closed")
        self.at += 1
        return paths

    def _single(self) -> None:
        c = self._peek()
        if c == "\\":
            self._escape()
        elif c == "[":
            self._char_class()
        elif c == "." or c not in _META:
            if not c.isprintable():
                raise UnsafePattern("control characters are not allowed")
            self.at += 1
        else:
            raise UnsafePattern(f"{c!r} at position {self.at} has nothing to apply to")

    def _escape(self) -> None:
        nxt = self.text[self.at + 1 : self.at + 2]
        if nxt not in _ESCAPABLE:
            raise UnsafePattern(f"the escape '\\{nxt}' is not allowed (backreferences, \\b and the like)")
        self.at += 2

    def _char_class(self) -> None:
        end = self.text.find("]", self.at + 2)  # a ']' right after '[' (or '[^') would be literal in Python
        body = self.text[self.at + 1 : end] if end != -1 else ""
        if end == -1 or not re.fullmatch(r"\^?(?:[A-Za-z0-9_.\-]|\\[dwsDWS.\-\\\]\[])+", body) or "[" in body:
            raise UnsafePattern("a character class may hold letters, digits, '_', '.', '-' and ranges only")
        self.at = end + 1

    def _quantifier(self) -> int | None:
        m = _QUANTIFIER.match(self.text, self.at)
        if m is None:
            return None
        self.at = m.end()
        if self._peek() in ("?", "+"):
            raise UnsafePattern("lazy and possessive quantifiers are not allowed")
        if m[0] == "?":
            return 2
        if m[0] in ("*", "+") or (m[2] and not m[3]):
            return MAX_REPEAT
        low = int(m[1])
        high = int(m[3]) if m[3] else low
        if high < low or high > MAX_REPEAT:
            raise UnsafePattern(f"a repetition {{{low},{high}}} must have low <= high <= {MAX_REPEAT}")
        return high - low + 1

    def _peek(self) -> str:
        return self.text[self.at : self.at + 1]


def check(pattern: str) -> int:
    """The pattern's ambiguity (paths); ``UnsafePattern`` unless it is in the language and compiles."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafePattern(f"longer than {MAX_PATTERN_CHARS} characters")
    paths = _Parser(pattern).parse()
    if paths > MAX_PATHS:
        raise UnsafePattern(
            f"too ambiguous: it can try more than {MAX_PATHS} ways to match (several '*', '+', '?' or large "
            "alternations); name the modules instead"
        )
    try:
        re.compile(pattern)
    except re.error as e:
        raise UnsafePattern(f"not a valid regular expression: {e}") from None
    return paths


@dataclass
class PatternTable:
    """An ordered ``{pattern: value}`` map, matched against module names exactly as PEFT does:
    the value of the *first* pattern that matches a suffix of the name starting at a dot boundary.

    Plain patterns (letters, digits, ``_ - .``) cannot vary in length, so only the suffix of their
    own length can match; they are indexed by (length, positions of their ``.`` wildcards), and one
    dictionary lookup per boundary replaces a regex per pattern - adapters trained with EVA carry a
    pattern per module, hundreds of them.
    """

    patterns: list[tuple[str, float]]
    _plain: dict[tuple[int, tuple[int, ...]], dict[str, int]] = field(default_factory=dict)
    _regex: list[tuple[int, re.Pattern[str]]] = field(default_factory=list)
    _paths: int = 0  # of all patterns, plain groups counting 1

    @classmethod
    def build(cls, patterns: Mapping[str, float]) -> PatternTable:
        """Raise ``UnsafePattern`` (naming the pattern) for any pattern outside the language."""
        table = cls(list(patterns.items()))
        for index, (pattern, _) in enumerate(table.patterns):
            try:
                paths = check(pattern)
            except UnsafePattern as e:
                raise UnsafePattern(f"{pattern[:80]!r}: {e}") from None
            if _PLAIN.fullmatch(pattern):
                wildcards = tuple(i for i, c in enumerate(pattern) if c == ".")
                table._paths += (len(pattern), wildcards) not in table._plain
                table._plain.setdefault((len(pattern), wildcards), {}).setdefault(pattern, index)
            else:
                table._paths += paths
                table._regex.append((index, re.compile(rf"(.*\.)?({pattern})$")))
        return table

    def check_budget(self, modules: Iterable[str]) -> None:
        """Refuse a table whose matching against ``modules`` could cost more than ``MAX_STEPS``."""
        steps = 0
        for module in modules:
            if len(module) > MAX_MODULE_CHARS:
                raise UnsafePattern(f"cannot be matched against a module name longer than {MAX_MODULE_CHARS}")
            steps += (module.count(".") + 1) * self._paths
        if steps > MAX_STEPS:
            raise UnsafePattern(
                f"matching {len(self.patterns)} patterns against these module names could take more than "
                f"{MAX_STEPS} steps; use fewer patterns, or plain module names (they cost least)"
            )

    def lookup(self, module: str, default: float) -> float:
        if len(module) > MAX_MODULE_CHARS:
            raise UnsafePattern(f"module name longer than {MAX_MODULE_CHARS} characters")
        best = self._first_plain(module)
        for index, regex in self._regex:
            if index >= best:
                break
            if regex.match(module):
                best = index
                break
        return self.patterns[best][1] if best < len(self.patterns) else default

    def _first_plain(self, module: str) -> int:
        best = len(self.patterns)
        if not self._plain:
            return best
        starts = {0, *(i + 1 for i, c in enumerate(module) if c == ".")}
        for (length, wildcards), names in self._plain.items():
            start = len(module) - length
            if start not in starts:
                continue
            suffix = list(module[start:])
            for i in wildcards:
                suffix[i] = "."
            hit = names.get("".join(suffix))
            if hit is not None and hit < best:
                best = hit
        return best


def check_all(patterns: Iterable[str]) -> list[str]:
    """Every problem with ``patterns``, one line each (for validators that collect problems)."""
    problems = []
    for pattern in patterns:
        try:
            check(pattern)
        except UnsafePattern as e:
            problems.append(f"{pattern[:80]!r}: {e}")
    return problems
