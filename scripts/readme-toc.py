#!/usr/bin/env python3
"""Writes the README's table of contents (its `##` and `###` headings) between the markers
`<!-- toc -->` and `<!-- /toc -->`; with --check, exits 1 when it is out of date instead."""
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- toc -->", "<!-- /toc -->"


def anchor(title):
    # GitHub's: lower case, punctuation dropped (but - and _), spaces to hyphens.
    text = re.sub(r"[`*]", "", title).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def toc(text):
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        match = re.match(r"^(##|###) (.+)$", line)
        if match:
            indent = "  " if match.group(1) == "###" else ""
            title = match.group(2).strip()
            lines.append(f"{indent}- [{re.sub(r'`', '', title)}](#{anchor(title)})")
    return "\n".join(lines)


def main():
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    body = text[:start] + text[end:]
    new = text[:start] + "\n" + toc(body) + "\n" + text[end:]
    if "--check" in sys.argv:
        if new != text:
            sys.exit("README.md: the table of contents is out of date; run python3 scripts/readme-toc.py")
        return
    README.write_text(new)


if __name__ == "__main__":
    main()
