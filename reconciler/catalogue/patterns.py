"""Key patterns: a tiny language for the keys of a bucket. Pure: no I/O.

A pattern is matched against a key below the source root, segment by segment (``/``
separates segments)::

    {model}/{post}/**/{file:image|video}
    products/{product_id}/{variant_weight}/{image_type:hero-card|info-card|other-images}/{file:image}
    {model}/profile/{stem:icon|avatar}.{ext:image}

- literal text matches itself, exactly (case and all);
- ``{name}`` captures text within one segment: a whole segment, or part of one
  (``{stem}.{ext}``); a placeholder before a literal takes as much as it can, so
  ``{stem}.{ext}`` splits ``a.b.jpg`` at its last dot;
- ``{name:CONSTRAINT}`` also restricts the value: ``CONSTRAINT`` is alternatives
  separated by ``|``, each a declared extension class (``image``: the value's extension,
  the text after its last dot — or the whole value, right after a literal dot — is one
  of the class's) or a word (the value is that word). Both compare regardless of case;
- ``**`` matches zero or more folders; as the last segment, everything below (one or
  more segments).

A placeholder may match the empty text (``M//x.jpg``): a rule whose capture comes out
empty skips the key as ``empty_segment`` rather than make a row with an empty name.

Two readings, held together by property tests: :meth:`Pattern.match` reads one key with
one anchored regular expression (the reference, and what ``explain`` shows), and the
columnar form (:attr:`Pattern.dir_regex`, :attr:`Pattern.file`) splits a key into its
folders and its file name, so that a listing's folders — tens of thousands for a
million keys — are matched once each and file names are tested by column expressions
(:mod:`reconciler.engine.frames`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SpecError

# Attributes of an object that templates may name; no capture may take their names.
ATTRIBUTES = ("key", "url", "size", "etag", "last_modified", "class", "rel")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WORD = re.compile(r"[^/{}|:\x00]+\Z")


@dataclass(frozen=True)
class Placeholder:
    name: str
    classes: tuple[str, ...] = ()  # extension classes, by name
    words: tuple[str, ...] = ()  # alternative words, in lower case
    after_dot: bool = False  # right after a literal "." in its segment: the value is an extension

    @property
    def constrained(self) -> bool:
        return bool(self.classes or self.words)


Piece = "str | Placeholder"


@dataclass(frozen=True)
class FileMatcher:
    """How the last segment is tested, as columns can test it (see :mod:`reconciler.engine.frames`):

    - ``any``: every file name (``{file}``, ``**``);
    - ``whole``: one placeholder over the whole name (``{file:image}``);
    - ``literal``: the name is ``text``;
    - ``stem_ext``: ``{a}.{b}`` — split at the name's last dot;
    - ``regex``: anything else, by ``regex`` (named groups) and the placeholders' constraints.
    """

    how: str
    placeholders: tuple[Placeholder, ...] = ()
    text: str = ""
    regex: str = ""


@dataclass(frozen=True)
class Pattern:
    text: str
    segments: tuple[tuple, ...]  # each: ("**",) or a tuple of pieces
    regex: re.Pattern = field(repr=False, compare=False)
    dir_regex: re.Pattern = field(repr=False, compare=False)
    file: FileMatcher = field(repr=False, compare=False)
    classes: dict = field(repr=False, compare=False)  # name -> frozenset of extensions

    @property
    def placeholders(self) -> list[Placeholder]:
        return [p for seg in self.segments if seg != ("**",) for p in seg if isinstance(p, Placeholder)]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.placeholders]

    @property
    def dir_names(self) -> list[str]:
        return [p.name for seg in self.segments[:-1] if seg != ("**",) for p in seg if isinstance(p, Placeholder)]

    @property
    def constrained(self) -> tuple[Placeholder, ...]:
        found = self.__dict__.get("_constrained")
        if found is None:  # computed once: match() runs for every distinct folder of a listing
            found = tuple(p for p in self.placeholders if p.constrained)
            object.__setattr__(self, "_constrained", found)
        return found

    def match(self, rel: str) -> dict[str, str] | None:
        """The captures of a key below the root, or None when the pattern does not
        match it (constraints included)."""
        m = self.regex.match(rel)
        if m is None:
            return None
        captures = m.groupdict()
        for p in self.constrained:
            if not satisfies(p, captures[p.name], self.classes):
                return None
        return captures


def extension(value: str) -> str | None:
    """The text after the last dot, lowercased; None without a dot."""
    dot = value.rfind(".")
    return value[dot + 1 :].lower() if dot >= 0 else None


def satisfies(p: Placeholder, value: str, classes: dict) -> bool:
    if not p.constrained:
        return True
    lowered = value.lower()
    if lowered in p.words:
        return True
    ext = lowered if p.after_dot else extension(value)
    return ext is not None and any(ext in classes[c] for c in p.classes)


def class_of(value: str, classes: dict) -> str | None:
    """The first declared class (in declaration order) holding the value's extension."""
    ext = extension(value)
    if ext is None:
        return None
    for name, exts in classes.items():
        if ext in exts:
            return name
    return None


# --------------------------------------------------------------------------- parsing


def parse(text: str, classes: dict, where: str = "pattern") -> Pattern:
    """Compile a pattern; ``classes`` maps class names to sets of lower-case extensions.
    Raises :class:`SpecError` naming ``where`` and what is wrong."""
    if not isinstance(text, str) or not text:
        raise SpecError(where, "a pattern is a non-empty string")
    if text.startswith("/") or text.endswith("/"):
        raise SpecError(where, f"{text!r}: a pattern neither begins nor ends with '/' (keys are relative to the root)")
    segments: list[tuple] = []
    seen: set[str] = set()
    for raw in text.split("/"):
        if raw == "**":
            if segments and segments[-1] == ("**",):
                raise SpecError(where, f"{text!r}: '**/**' is '**'")
            segments.append(("**",))
            continue
        if "**" in raw:
            raise SpecError(where, f"{text!r}: '**' stands alone in its segment")
        if raw == "":
            raise SpecError(where, f"{text!r}: an empty segment ('//')")
        segments.append(tuple(_pieces(raw, text, where, classes, seen)))
    if sum(1 for s in segments if s == ("**",)) > 1:
        raise SpecError(where, f"{text!r}: at most one '**' in a pattern")
    return Pattern(text, tuple(segments), _full_regex(segments), _dir_regex(segments), _file_matcher(segments[-1]),
                   classes)


def _pieces(raw: str, text: str, where: str, classes: dict, seen: set[str]) -> list:
    pieces: list = []
    i = 0
    while i < len(raw):
        if raw[i] == "{":
            end = raw.find("}", i)
            if end < 0:
                raise SpecError(where, f"{text!r}: '{{' without its '}}'")
            body = raw[i + 1 : end]
            name, _, constraint = body.partition(":")
            if not _NAME.match(name):
                raise SpecError(where, f"{text!r}: {{{body}}} — a placeholder's name is a word (letters, digits, _)")
            if name in ATTRIBUTES:
                raise SpecError(where, f"{text!r}: {{{name}}} is an object attribute; name the capture otherwise")
            if name in seen:
                raise SpecError(where, f"{text!r}: {{{name}}} is captured twice")
            seen.add(name)
            if pieces and isinstance(pieces[-1], Placeholder):
                raise SpecError(where, f"{text!r}: two placeholders side by side; put literal text between them")
            cls: list[str] = []
            words: list[str] = []
            if ":" in body:
                for alt in constraint.split("|"):
                    if alt in classes:
                        cls.append(alt)
                    elif _WORD.match(alt):
                        words.append(alt.lower())
                    else:
                        raise SpecError(where, f"{text!r}: {{{body}}} — {alt!r} is neither a class nor a word")
            after_dot = bool(pieces) and isinstance(pieces[-1], str) and pieces[-1].endswith(".")
            pieces.append(Placeholder(name, tuple(cls), tuple(words), after_dot))
            i = end + 1
        else:
            end = raw.find("{", i)
            end = len(raw) if end < 0 else end
            literal = raw[i:end]
            if "}" in literal:
                raise SpecError(where, f"{text!r}: '}}' without its '{{'")
            pieces.append(literal)
            i = end
    return pieces


def _segment_regex(seg: tuple) -> str:
    return "".join(f"(?P<{p.name}>[^/]*)" if isinstance(p, Placeholder) else re.escape(p) for p in seg)


def _full_regex(segments: list[tuple]) -> re.Pattern:
    out = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ("**",):
            out.append(".+" if last else "(?:[^/]*/)*")
        else:
            out.append(_segment_regex(seg) + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z", re.S)


def _dir_regex(segments: list[tuple]) -> re.Pattern:
    """Over a key's folders with their trailing "/" (``M/P/`` of ``M/P/x.jpg``; "" for a
    key without a folder)."""
    out = []
    for seg in segments[:-1]:
        out.append("(?:[^/]*/)*" if seg == ("**",) else _segment_regex(seg) + "/")
    if segments[-1] == ("**",):
        out.append(".*")  # the file's folders below (its name is the last segment)
    return re.compile("".join(out) + r"\Z", re.S)


def _file_matcher(seg: tuple) -> FileMatcher:
    if seg == ("**",):
        return FileMatcher("any")
    holders = tuple(p for p in seg if isinstance(p, Placeholder))
    if len(seg) == 1 and holders:
        return FileMatcher("any" if not holders[0].constrained else "whole", holders)
    if not holders:
        return FileMatcher("literal", text="".join(seg))
    if len(seg) == 3 and seg[1] == "." and len(holders) == 2:
        return FileMatcher("stem_ext", holders)
    return FileMatcher("regex", holders, regex="^" + _segment_regex(seg) + "$")
