"""Unicode script ranges that decide which words a monolingual vocabulary keeps.

A script is a preset name or a custom inclusive code-point range ``(first, last)``:

    "hiragana"  U+3040–309F
    "katakana"  U+30A0–30FF, U+31F0–31FF (small letters), U+FF66–FF9F (half-width)
    "cjk"       the CJK unified ideographs (U+4E00–9FFF, extensions A–F, compatibility
                ideographs) and the iteration mark 々 (U+3005)
    "hangul"    syllables U+AC00–D7AF, jamo U+1100–11FF, U+3130–318F, U+A960–A97F, U+D7B0–D7FF

``JAPANESE`` and ``KOREAN`` are the preset groups for the two languages.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Tuple, Union

Range = Tuple[int, int]
Script = Union[str, Range]

PRESETS = {
    "hiragana": ((0x3040, 0x309F),),
    "katakana": ((0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)),
    "cjk": ((0x3005, 0x3005), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF),
            (0x2A700, 0x2EBEF)),
    "hangul": ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF)),
}
JAPANESE = ("hiragana", "katakana", "cjk")
KOREAN = ("hangul",)


def script_ranges(scripts: Iterable[Script]) -> Tuple[Range, ...]:
    """The code-point ranges of ``scripts`` (preset names and/or ``(first, last)`` pairs)."""
    if isinstance(scripts, str) or (isinstance(scripts, tuple) and len(scripts) == 2
                                    and all(isinstance(v, int) for v in scripts)):
        scripts = (scripts,)  # one script given bare
    ranges = []
    for s in scripts:
        if isinstance(s, str):
            if s not in PRESETS:
                raise ValueError(f"scripts: unknown script {s!r}; presets: {sorted(PRESETS)}, "
                                 "or a (first, last) code-point range")
            ranges.extend(PRESETS[s])
        elif (isinstance(s, Sequence) and len(s) == 2 and all(isinstance(v, int) for v in s)
              and 0 <= s[0] <= s[1] <= 0x10FFFF):
            ranges.append((int(s[0]), int(s[1])))
        else:
            raise ValueError(f"scripts: expected preset names or (first, last) code-point ranges with "
                             f"0 <= first <= last <= 0x10FFFF, got {s!r}")
    if not ranges:
        raise ValueError("scripts: expected at least one script")
    return tuple(ranges)


def in_scripts(text: str, ranges: Tuple[Range, ...]) -> bool:
    """Whether ``text`` is non-empty and every character lies in one of ``ranges``."""
    return bool(text) and all(any(lo <= ord(ch) <= hi for lo, hi in ranges) for ch in text)
