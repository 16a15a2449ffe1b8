#!/usr/bin/env python3
"""Fails when modules import each other in a circle (STYLE.md: dependencies
point one way).

Rust (src/): an edge from a module to each module a `crate::` or `super::` path
in its code names (doc comments, `//` comments and a trailing `#[cfg(test)] mod
tests` are skipped); a parent's `mod child;` is not an edge, so a child naming
its parent (`super::Aiec`) is not a circle. Python (python/aiec): an edge for
each `from . import x` / `from .x import ...`, deferred imports included.
Prints every strongly connected component of more than one module.

    python3 scripts/check_module_cycles.py
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def rust_graph(src):
    mods = {}
    for d, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                rel = os.path.relpath(os.path.join(d, f), src)[:-3].split(os.sep)
                if rel[-1] in ("mod", "lib"):
                    rel = rel[:-1]
                mods[tuple(rel)] = os.path.join(d, f)

    def resolve(path):
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in mods:
                return tuple(path[:n])
        return None

    edges = {m: set() for m in mods}
    for m, p in mods.items():
        with open(p) as fh:
            text = "".join(line.split("//")[0] for line in fh if not line.strip().startswith("//"))
        cut = text.find("#[cfg(test)]\nmod tests")
        if cut >= 0:
            text = text[:cut]
        for mt in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            base = [] if mt.group(1) == "crate" else list(m[:-1])
            t = resolve(base + mt.group(2).strip(":").split("::"))
            if t and t != m:
                edges[m].add(t)
        for mt in re.finditer(r"\buse (crate|super)::(?:(\w+)::)?\{([^}]*)\}", text):
            base = [] if mt.group(1) == "crate" else list(m[:-1])
            if mt.group(2):
                base.append(mt.group(2))
            for item in mt.group(3).split(","):
                seg = item.strip().split("::")[0].split(" ")[0]
                t = resolve(base + [seg]) if seg not in ("self", "") else None
                if t and t != m:
                    edges[m].add(t)
    return {"::".join(k) or "crate": {"::".join(v) or "crate" for v in vs} for k, vs in edges.items()}


def python_graph(pkg):
    names = {f[:-3] for f in os.listdir(pkg) if f.endswith(".py")}
    edges = {n: set() for n in names}
    for n in names:
        with open(os.path.join(pkg, n + ".py")) as fh:
            text = fh.read()
        for mt in re.finditer(r"^\s*from \.(\w*) import ([\w, ]+)", text, re.M):
            targets = [mt.group(1)] if mt.group(1) else [t.strip().split(" ")[0] for t in mt.group(2).split(",")]
            edges[n] |= {t for t in targets if t in names and t != n}
    return edges


def cycles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    found = 0
    for what, edges in [
        ("src", rust_graph(os.path.join(ROOT, "src"))),
        ("python/aiec", python_graph(os.path.join(ROOT, "python", "aiec"))),
    ]:
        for comp in cycles(edges):
            found += 1
            print(f"{what}: import circle {comp}")
            for a in comp:
                print(f"    {a} -> {sorted(b for b in edges[a] if b in comp)}")
    print(f"check_module_cycles: {found} circle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
