#!/usr/bin/env python3
"""Import cycles between the brain's modules (files).

Reads every `.rs` file under brain/src, collects the paths it names through `crate::`,
`super::` and `self::` (in `use` trees and inline paths), resolves each to the deepest module
file that exists, and prints the strongly connected components of that file graph with more
than one file (Tarjan). A component is a set of files that all import each other, directly or
through others: the layers in ARCHITECTURE.md hold when no component spans two layers.

    python3 bench/module_cycles.py            # all code, tests included
    python3 bench/module_cycles.py --no-tests # without `#[cfg(test)]` modules and tests.rs files
    python3 bench/module_cycles.py --edges    # also print the edges inside each component

Approximate on purpose: it reads text (comments and string literals removed), not the
compiler's resolution; a name re-exported by a module counts as an import of that module.
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "brain", "src")


def module_of(rel):
    """`sandbox/docker/mod.rs` -> ("sandbox", "docker"); `lib.rs` -> ()."""
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip(src):
    """Removes comments, string and char literals (keeps line structure roughly)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = src.find('"' + m.group(1), i + len(m.group(0)))
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", src[i:i + 4]) or (c == "'" and src.startswith("'\\", i)):
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x..|\\.|[^\\'])'", src[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use_tree(tree):
    """`crate::{a, b::{c, d as e}, f::*}` -> ["crate::a", "crate::b::c", "crate::b::d", "crate::f"]."""
    tree = re.sub(r"\s+", " ", tree)
    tree = re.sub(r"\s*(::|,|\{|\})\s*", r"\1", tree).strip()
    out = []

    def walk(prefix, s):
        # s is one tree: `path`, `path::{...}`, `{...}`, `path as x`, `path::*`
        i = s.find("{")
        if i < 0:
            s = s.split(" as ")[0].strip()
            s = re.sub(r"::\*$", "", s)
            if s == "self":
                out.append(prefix)
            else:
                out.append(prefix + ("::" if prefix and s else "") + s)
            return
        head = s[:i].rstrip(":")
        body = s[i + 1:s.rfind("}")]
        new_prefix = prefix + ("::" if prefix and head else "") + head
        depth, start = 0, 0
        for j, ch in enumerate(body + ","):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                part = body[start:j]
                if part:
                    walk(new_prefix, part)
                start = j + 1

    walk("", tree)
    return out


def collect(files, with_tests):
    modules = {module_of(rel): rel for rel in files}
    edges = defaultdict(set)
    for rel in files:
        if not with_tests and os.path.basename(rel) == "tests.rs":
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            src = strip(f.read())
        here = module_of(rel)
        # Walk the text tracking inline `mod x {` blocks so `super::` inside them resolves.
        stack = []  # (name, depth at which it opened, is_test)
        depth = 0
        pending_test = False
        pos = 0
        paths = []
        token = re.compile(
            r"#\[cfg\(test\)\]|\bmod\s+(\w+)\s*\{|\buse\s+((?:crate|super|self)(?:::)?[^;]*);|\b((?:crate|super|self)(?:::\w+)+)|[{}]")
        for m in token.finditer(src):
            t = m.group(0)
            if t == "#[cfg(test)]":
                pending_test = True
                continue
            if m.group(1):
                depth += 1
                stack.append((m.group(1), depth, pending_test))
                pending_test = False
                continue
            if t == "{":
                depth += 1
                continue
            if t == "}":
                if stack and stack[-1][1] == depth:
                    stack.pop()
                depth -= 1
                continue
            in_test = any(s[2] for s in stack)
            if in_test and not with_tests:
                continue
            pending_test = False
            cur = here + tuple(s[0] for s in stack)
            if m.group(2):
                raw = [p for p in expand_use_tree(m.group(2))]
            else:
                raw = [m.group(3)]
            for p in raw:
                segs = [s for s in p.split("::") if s]
                base = cur
                if segs and segs[0] == "crate":
                    base, segs = (), segs[1:]
                else:
                    while segs and segs[0] in ("super", "self"):
                        if segs[0] == "super":
                            base = base[:-1]
                        segs = segs[1:]
                paths.append(base + tuple(segs))
        for p in paths:
            # the deepest existing module file that is a prefix of the path
            for k in range(len(p), -1, -1):
                target = modules.get(p[:k])
                if target:
                    break
            if target and target != rel:
                edges[rel].add(target)
    return edges


def tarjan(nodes, edges):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    with_tests = "--no-tests" not in sys.argv
    files = sorted(
        os.path.relpath(os.path.join(d, f), ROOT)
        for d, _, fs in os.walk(ROOT) for f in fs if f.endswith(".rs"))
    # main.rs is the binary's own crate root: its `crate::` is not the library's.
    files = [f for f in files if f != "main.rs"]
    edges = collect(files, with_tests)
    comps = [c for c in tarjan(files, edges) if len(c) > 1]
    comps.sort(key=len, reverse=True)
    print(f"{len(files)} files, {sum(len(v) for v in edges.values())} import edges "
          f"({'tests included' if with_tests else 'tests excluded'})")
    print(f"largest cycle (strongly connected component): {len(comps[0]) if comps else 0} files")
    for c in comps:
        print(f"\n{len(c)} files: " + " ".join(c))
        if "--edges" in sys.argv:
            members = set(c)
            for v in c:
                inside = sorted(w for w in edges.get(v, ()) if w in members)
                print(f"  {v} -> {' '.join(inside)}")


if __name__ == "__main__":
    main()
