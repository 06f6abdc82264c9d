"""Language codes and names for translation prompts.

``language_name("ja") == language_name("Japanese") == language_name("japanese") == "Japanese"``.
Region and script suffixes are ignored (``zh-CN``, ``pt_BR``, ``zh-Hant`` → their language).
A name outside the table is used as given (prompts take any language name); a short code outside
it raises, since it is most likely a typo.
"""

from __future__ import annotations

from typing import Dict

LANGUAGES: Dict[str, str] = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "hu": "Hungarian", "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "kk": "Kazakh",
    "km": "Khmer", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "ms": "Malay", "my": "Burmese",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili",
    "ta": "Tamil", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu",
    "vi": "Vietnamese", "zh": "Chinese",
}
_BY_NAME = {name.lower(): name for name in LANGUAGES.values()}
_ALIASES = {"jp": "ja", "cn": "zh", "kr": "ko", "nb": "no", "nn": "no", "iw": "he", "fil": "tl"}


def language_name(lang: str) -> str:
    """The English name used in prompts, for a code (``ja``, ``zh-CN``) or a name (``Japanese``)."""
    if not isinstance(lang, str) or not lang.strip():
        raise ValueError(f"language: expected a code such as 'ja' or a name such as 'Japanese', got {lang!r}")
    text = lang.strip()
    key = text.lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    base = key.replace("_", "-").split("-")[0]
    base = _ALIASES.get(base, base)
    if base in LANGUAGES:
        return LANGUAGES[base]
    if len(base) <= 3 and text == text.lower():
        known = ", ".join(sorted(LANGUAGES))
        raise ValueError(f"language: unknown language code {lang!r}; known codes: {known} "
                         f"(or pass the language's name, e.g. 'Japanese')")
    return text
