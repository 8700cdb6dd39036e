"""Every console template and script keeps to the CSP: no inline script or style, and no
markup that turns autoescaping off."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ttp_console.app import STATIC_DIR, TEMPLATES_DIR, console_templates

TEMPLATES = sorted(TEMPLATES_DIR.glob("*.html"))
SCRIPTS = sorted(STATIC_DIR.glob("*.js"))

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
_STYLE_ELEMENT = re.compile(r"<style\b", re.IGNORECASE)
_STYLE_ATTRIBUTE = re.compile(r"\sstyle\s*=", re.IGNORECASE)
_EVENT_HANDLER = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
_JS_URL = re.compile(r"javascript:", re.IGNORECASE)
_UNESCAPED = re.compile(r"\|\s*safe\b|autoescape\s+false|Markup\(")


def test_there_are_templates() -> None:
    assert {p.name for p in TEMPLATES} >= {"base.html", "login.html", "error.html"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_has_no_inline_code_or_unescaped_output(path: Path) -> None:
    text = path.read_text()
    for pattern in (_INLINE_SCRIPT, _STYLE_ELEMENT, _STYLE_ATTRIBUTE, _EVENT_HANDLER, _JS_URL):
        assert not pattern.search(text), f"{path.name}: {pattern.pattern}"
    assert not _UNESCAPED.search(text), f"{path.name} turns escaping off"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_build_no_code_from_strings(path: Path) -> None:
    text = path.read_text()
    # (The fleet's fragment goes in through innerHTML: server-rendered and escaped, from this
    # origin, and the CSP keeps any script in it from running.)
    for construct in ("eval(", "new Function(", "document.write(", 'setTimeout("', "setTimeout('"):
        assert construct not in text, f"{path.name} uses {construct}"


def test_autoescape_is_on() -> None:
    rendered = console_templates().env.from_string("{{ value }}").render(value="<b>&")
    assert rendered == "&lt;b&gt;&amp;"
