"""Encyclopedic English in the shape of a Wikipedia XML dump, made on this machine.

Usage: python bench/wiki.py OUTFILE [SIZE]   (SIZE in bytes, K/M suffixes; default 1M)

The held-out text of issue 15 (Wikipedia article text with XML and wiki markup) cannot be
fetched here, so this writes text that looks the way it does from prose the Python
installation itself ships: the language reference's topics (``pydoc_data.topics``,
~465 KB of expository English) and then the standard library's module, class and function
docstrings. Consecutive topics or modules make one ``<page>`` of about 30 KB (as long as real
articles, so the per-page XML is a small share) with the dump's metadata, and its
body becomes wikitext: unwrapped paragraphs, ``==headings==``, an ``{{Infobox}}``,
``[[links]]`` to the other articles it names, ``'''bold'''``/``''italic''``,
``<code>``/``<syntaxhighlight>``, ``<ref>{{cite web}}</ref>`` and ``[[Category:]]`` lines,
all XML-escaped inside ``<text>`` (``&amp;``, ``&lt;``, ``&quot;``) as in a real dump.

Deterministic: the same Python version gives the same bytes (no randomness, sorted order).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import sysconfig
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

UNDERLINES = {"*": 2, "=": 3, "-": 4, "~": 4, "^": 4}  # reST underline -> heading level
ARTICLE_BYTES = 30_000  # real articles are long: the per-page XML is a small share of them


def _title(name: str) -> str:
    return name.replace("-", " ").replace("_", " ").strip().capitalize()


def _unwrap(lines: list[str]) -> list[str]:
    """reST-ish text -> wikitext lines: paragraphs on one line, headings, lists, code."""
    out: list[str] = []
    para: list[str] = []
    code: list[str] = []

    def flush_para():
        if para:
            out.append(" ".join(s.strip() for s in para))
            para.clear()

    def flush_code():
        if code:
            while code and not code[-1].strip():
                code.pop()
            body = "\n".join(code)
            if body.strip():
                out.append('<syntaxhighlight lang="python">\n' + body + "\n</syntaxhighlight>")
            code.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        if line and nxt and len(set(nxt)) == 1 and nxt[0] in UNDERLINES \
                and len(nxt) >= len(line) - 2:
            flush_para()
            flush_code()
            eq = "=" * UNDERLINES[nxt[0]]
            out.append(f"{eq} {line.strip()} {eq}")
            i += 2
            continue
        if line.startswith("   ") and not para:
            flush_para()
            code.append(line[3:])
        elif line.startswith("   ") and para and code:
            code.append(line[3:])
        elif not line.strip():
            flush_para()
            if code:
                code.append("")
        elif line.lstrip().startswith(("* ", "- ")) and not line.startswith("   "):
            flush_para()
            flush_code()
            para.append("* " + line.lstrip()[2:])
        else:
            flush_code()
            if para and para[0].startswith("* ") and line.startswith("  "):
                para.append(line)
            else:
                para.append(line)
        i += 1
    flush_para()
    flush_code()
    return out


def _inline(text: str, titles: dict[str, str]) -> str:
    """Inline markup of one paragraph: code, emphasis and links to other articles."""
    if text.startswith("<syntaxhighlight"):
        return text
    text = re.sub(r'"([A-Za-z_][A-Za-z0-9_.()]*)"', r"<code>\1</code>", text)
    text = re.sub(r"\*([A-Za-z][A-Za-z0-9_ ]{0,40})\*", r"''\1''", text)

    def link(m: re.Match) -> str:
        words = m.group(1)
        key = words.lower()
        if key in titles:
            target = titles[key]
            return f"see [[{target}]]" if target.lower() == key else f"see [[{target}|{words}]]"
        return f"see [[{words}]]"
    return re.sub(r"see section ([A-Z][A-Za-z ]{2,40}?)(?=[.,;)])", link, text)


def _article(title: str, body_lines: list[str], titles: dict[str, str], kind: str,
             source: str) -> str:
    paras = _unwrap(body_lines)
    if paras and paras[0].startswith("=="):
        paras = paras[1:]  # the topic's own title heading
    lead = next((k for k, p in enumerate(paras) if not p.startswith(("=", "<", "*"))), None)
    if lead is not None:  # "In [[Python]], assert statements are ...", title in bold
        text = paras[lead]
        text = text[0].lower() + text[1:] if text[:2].istitle() else text
        text = "In [[Python (programming language)|Python]], " + text
        paras[lead] = re.sub(r"\b(" + re.escape(title.split(" (")[0]) + r"\w*)",
                             r"'''\1'''", text, count=1, flags=re.IGNORECASE)
    body = [_inline(p, titles) for p in paras]
    info = ("{{Infobox programming language feature\n"
            f"| name = {title}\n| language = [[Python (programming language)|Python]]\n"
            f"| kind = {kind}\n| source = <code>{source}</code>\n}}}}")
    words = len(" ".join(body).split())
    ref = ("<ref>{{cite web |title=" + title + " |url=https://docs.python.org/3/"
           + source.replace(".", "/") + ".html |website=Python documentation |publisher="
           "[[Python Software Foundation]] |access-date=4 December 2026}}</ref>")
    if body:
        body[0 if not body[0].startswith("=") else -1] += ref
    text = "\n\n".join([info] + body + ["== References ==\n{{Reflist}}",
                                        "== See also ==\n" + "\n".join(
                                            f"* [[{t}]]" for t in _see_also(title, titles)),
                                        f"[[Category:Python (programming language)]]\n"
                                        f"[[Category:{kind.capitalize()}s]]\n"
                                        f"{{{{Programming-stub}}}}" if words < 300 else
                                        "[[Category:Python (programming language)]]\n"
                                        f"[[Category:{kind.capitalize()}s]]"])
    return text


def _see_also(title: str, titles: dict[str, str]) -> list[str]:
    names = sorted(set(titles.values()))
    k = names.index(title) if title in names else 0
    return [n for n in names[k + 1:k + 4] if n != title]


def _page(title: str, page_id: int, text: str) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()
    esc = escape(text, {'"': "&quot;"})
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>0</ns>\n"
            f"    <id>{page_id}</id>\n    <revision>\n      <id>{page_id * 7919 + 104729}</id>\n"
            f"      <parentid>{page_id * 7919 + 100003}</parentid>\n"
            f"      <timestamp>2026-{1 + page_id % 12:02d}-{1 + page_id % 28:02d}T"
            f"{page_id % 24:02d}:{page_id * 7 % 60:02d}:{page_id * 13 % 60:02d}Z</timestamp>\n"
            f"      <contributor>\n        <username>Editor{page_id % 97}</username>\n"
            f"        <id>{page_id * 31 % 100000}</id>\n      </contributor>\n"
            f"      <comment>/* {escape(title)} */ copyedit</comment>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" xml:space="preserve">{esc}</text>\n'
            f"      <sha1>{digest}</sha1>\n    </revision>\n  </page>\n")


def _module_docs() -> list[tuple[str, list[str]]]:
    """(module name, reST-ish lines) for the standard library's pure-Python modules."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(lib.glob("*.py")):
        name = p.stem
        if name.startswith("_") or name in {"antigravity", "this", "idlelib", "tkinter",
                                              "turtle", "pydoc", "site"}:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 (platform-only modules)
            continue
        lines = [name, "*" * len(name), ""]
        doc = inspect.getdoc(mod) or ""
        lines += doc.splitlines() + [""]
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or \
                    getattr(obj, "__module__", None) != name:
                continue
            d = inspect.getdoc(obj)
            if not d or len(d) < 80:
                continue
            lines += [attr, "=" * len(attr), ""] + d.splitlines() + [""]
            if inspect.isclass(obj):  # and its documented methods, one level deeper
                for meth, fn in sorted(vars(obj).items()):
                    md = inspect.getdoc(fn) if inspect.isfunction(fn) else None
                    if meth.startswith("_") or not md or len(md) < 80:
                        continue
                    label = f"{attr}.{meth}"
                    lines += [label, "-" * len(label), ""] + md.splitlines() + [""]
        if len(lines) > 8:
            out.append((name, lines))
    return out


def make(size: int) -> bytes:
    import pydoc_data.topics as topics

    items = [(_title(k), v.splitlines(), "statement" if " statement" in v[:80] else "topic",
              f"reference.{k}") for k, v in sorted(topics.topics.items())]
    items += [(f"{name} (Python module)", lines, "module", f"library.{name}")
              for name, lines in _module_docs()]
    titles = {}
    for title, lines, _, _ in items:
        titles[title.lower()] = title
        if lines:
            titles[lines[0].strip().lower()] = title
    head = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" '
            'xml:lang="en">\n  <siteinfo>\n    <sitename>Wikipedia</sitename>\n'
            "    <dbname>enwiki</dbname>\n    <generator>MediaWiki 1.45</generator>\n"
            "  </siteinfo>\n")
    out = [head]
    n = len(head)
    group: list = []
    for k, item in enumerate(items):
        group.append(item)
        if sum(len("\n".join(g[1])) for g in group) < ARTICLE_BYTES and k + 1 < len(items):
            continue
        title, _, kind, source = group[0]
        lines = [ln for g in group for ln in g[1] + [""]]
        page = _page(title, 1000 + 37 * k, _article(title, lines, titles, kind, source))
        group = []
        out.append(page)
        n += len(page.encode())
        if n >= size:
            break
    data = "".join(out).encode()
    if len(data) < size:
        raise SystemExit(f"bench/wiki.py: only {len(data):,} bytes of articles here")
    return data[:size]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from nacz.cli import parse_size

    size = parse_size(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
    data = make(size)
    Path(sys.argv[1]).write_bytes(data)
    print(f"{sys.argv[1]}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
