"""Long text in parts WhatsApp takes: cut at a paragraph, a line, then a space, never inside a grapheme's joiners."""

from __future__ import annotations

import unicodedata

TEXT_MAX = 4096  # Meta's text.body, in characters (counted here in UTF-16 units)


def _utf16_len(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


_GLUE = {0x200D, 0x20E3}  # zero-width joiner, combining keycap: bind to the character before them


def _binds_backwards(ch: str) -> bool:
    """Whether `ch` belongs to the character before it (a cut before it would split one visible character)."""
    code = ord(ch)
    return (
        code in _GLUE
        or 0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
        or unicodedata.combining(ch) != 0
    )


def split_text(text: str, limit: int = TEXT_MAX, max_parts: int = 1_000) -> list[str]:
    """`text` in parts of at most `limit` UTF-16 units, cut at a paragraph, a line, then a space (in the second half
    of the part), else before the character that would overflow; whitespace at a cut is dropped. Stops once past
    `max_parts` parts (the caller refuses such a text; the rest is not worth cutting)."""
    parts: list[str] = []
    rest = text.strip()
    while rest and len(parts) <= max_parts:
        if _utf16_len(rest) <= limit:
            parts.append(rest)
            break
        end, units = 0, 0
        while units + (2 if ord(rest[end]) > 0xFFFF else 1) <= limit:
            units += 2 if ord(rest[end]) > 0xFFFF else 1
            end += 1
        window = rest[:end]
        cut = next((i + len(sep) for sep in ("\n\n", "\n", " ") if (i := window.rfind(sep)) > end // 2), None)
        if cut is None:
            cut = end
            while cut > max(1, end - 16) and _binds_backwards(rest[cut]):  # a longer cluster is not a character
                cut -= 1
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return parts
