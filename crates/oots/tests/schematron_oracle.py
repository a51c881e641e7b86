#!/usr/bin/env python3
"""Test oracle for Varti's Schematron runner (used only by tests, never at run time).

Usage: schematron_oracle.py RULES.sch DOC.xml [DOC.xml ...]
       schematron_oracle.py --bench SECS DOC.xml RULES.sch [RULES.sch ...]

Turns the Schematron file into an XSLT 2.0 stylesheet the way the ISO skeleton does (one
mode per pattern, one template per rule matching its context with decreasing priority so
the first rule of a pattern wins, lets as xsl:variable, default templates walking
attributes and elements), runs it with Saxon (PyPI `saxonche`) and prints one line per
failed assert / fired report: `id<TAB>location`. The XSLT template matching and XPath
evaluation are Saxon's, independent of Varti's engine. For each document, the output
block starts with `== path`. When Saxon cannot evaluate a rule on a document (a dynamic
error such as FORG0001), it stops that document: its block is one line `!error<TAB>code`.

With `--bench` (used by `examples/edm_bench.rs`, to compare Varti's runner with Saxon on
the same bytes), the rule files are compiled once, then the document is parsed and every
rule file run on it, as often as fits in SECS seconds after a one-second warm-up; only that
loop is timed. It prints one line `rate=<validations per second> cpu_ms=<process CPU
milliseconds per validation> findings=<lines of the last result>`.
"""
import os
import re
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from saxonche import PySaxonProcessor

S = "{http://purl.oclc.org/dsdl/schematron}"

# Same location convention as Varti: document prefixes, position among same-named
# element siblings, @name for attributes.
LOCATION = (
    "if (. instance of document-node()) then '/' else "
    "concat('/', string-join(for $a in ./ancestor-or-self::node()[not(. instance of document-node())] "
    "return if ($a instance of attribute()) then concat('@', name($a)) "
    "else concat(name($a), '[', count($a/preceding-sibling::*[node-name(.) = node-name($a)]) + 1, ']'), '/'))"
)


def compile_sch(path):
    root = ET.parse(path).getroot()
    stem = os.path.splitext(os.path.basename(path))[0]
    ns = [(n.get("prefix"), n.get("uri")) for n in root.findall(S + "ns")]
    out = ['<xsl:stylesheet version="2.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"']
    for p, u in ns:
        out.append(f" xmlns:{p}={quoteattr(u)}")
    out.append(' exclude-result-prefixes="#all">\n<xsl:output method="text"/>\n')
    for l in root.findall(S + "let"):
        out.append(f'<xsl:variable name="{l.get("name")}" select={quoteattr(l.get("value"))}/>\n')
    patterns = root.findall(S + "pattern")
    out.append('<xsl:template match="/">')
    for i, _ in enumerate(patterns):
        out.append(f'<xsl:apply-templates select="/" mode="M{i}"/>')
    out.append("</xsl:template>\n")
    for i, p in enumerate(patterns):
        for l in p.findall(S + "let"):
            out.append(f'<xsl:variable name="{l.get("name")}" select={quoteattr(l.get("value"))}/>\n')
        rules = p.findall(S + "rule")
        for j, r in enumerate(rules):
            out.append(
                f'<xsl:template match={quoteattr(r.get("context"))} priority="{1000 - j}" mode="M{i}">'
            )
            k = 0
            for child in r:
                if child.tag == S + "let":
                    out.append(
                        f'<xsl:variable name="{child.get("name")}" select={quoteattr(child.get("value"))}/>'
                    )
                elif child.tag in (S + "assert", S + "report"):
                    k += 1
                    rid = child.get("id") or r.get("id") or f"{stem}#pattern{i + 1}.rule.{k}"
                    test = child.get("test")
                    cond = f"not({test})" if child.tag == S + "assert" else f"({test})"
                    out.append(
                        f"<xsl:if test={quoteattr(cond)}>"
                        f"<xsl:value-of select={quoteattr(repr_str(rid))}/><xsl:text>&#9;</xsl:text>"
                        f"<xsl:value-of select={quoteattr(LOCATION)}/><xsl:text>&#10;</xsl:text>"
                        "</xsl:if>"
                    )
            out.append(f'<xsl:apply-templates select="@*|*" mode="M{i}"/></xsl:template>\n')
        out.append(f'<xsl:template match="text()" priority="-1" mode="M{i}"/>\n')
        out.append(
            f'<xsl:template match="@*|node()" priority="-2" mode="M{i}">'
            f'<xsl:apply-templates select="@*|*" mode="M{i}"/></xsl:template>\n'
        )
    out.append("</xsl:stylesheet>\n")
    return "".join(out)


def repr_str(s):
    return "'" + s.replace("'", "''") + "'"


def transform(exe, node):
    """(result, None), or (None, the XPath error code) when a rule cannot be evaluated.

    Saxon writes the error code only to the process's stderr (file descriptor 2), not into
    the exception, so that descriptor is captured during the call."""
    with tempfile.TemporaryFile(mode="w+") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            return exe.transform_to_string(xdm_node=node), None
        except Exception as e:
            failure = str(e).strip()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        text = err.read()
    m = re.search(r"\b([A-Z]{4}[0-9]{4})\b", text)
    return None, m.group(1) if m else failure


def bench(secs, doc_path, schs):
    with open(doc_path, encoding="utf-8") as fh:
        text = fh.read()
    with PySaxonProcessor(license=False) as proc:
        x = proc.new_xslt30_processor()
        exes = [x.compile_stylesheet(stylesheet_text=compile_sch(s)) for s in schs]

        def validate():
            node = proc.parse_xml(xml_text=text)
            return "".join(exe.transform_to_string(xdm_node=node) or "" for exe in exes)

        warm = time.perf_counter()
        while time.perf_counter() - warm < 1.0:
            validate()
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < secs:
            result = validate()
            n += 1
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"rate={n / wall:.1f} cpu_ms={1000 * cpu / n:.3f} findings={len(result.splitlines())}")
    return 0


def main():
    if sys.argv[1] == "--bench":
        return bench(float(sys.argv[2]), sys.argv[3], sys.argv[4:])
    sch, docs = sys.argv[1], sys.argv[2:]
    xslt = compile_sch(sch)
    with PySaxonProcessor(license=False) as proc:
        x = proc.new_xslt30_processor()
        exe = x.compile_stylesheet(stylesheet_text=xslt)
        for d in docs:
            print(f"== {d}")
            with open(d, encoding="utf-8") as fh:
                node = proc.parse_xml(xml_text=fh.read())
            res, error = transform(exe, node)
            if error is not None:
                print(f"!error\t{error}")
                continue
            sys.stdout.write(res or "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
