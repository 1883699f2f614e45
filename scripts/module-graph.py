#!/usr/bin/env python3
"""Prints mpp's module graph: which top-level module of src/ uses which (`crate::x`), and the
cycles among them (strongly connected components of more than one module).

    python3 scripts/module-graph.py [SRC]    # SRC defaults to src/

Reads the sources as text: `use crate::a::b` and `crate::a::` paths count, `#[cfg(test)]`
modules at the bottom of a file do not (tests may reach anywhere)."""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
edges = {}
for root, _, files in os.walk(src):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(root, name)
        rel = os.path.relpath(path, src)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        text = open(path, encoding="utf-8").read()
        text = text.split("#[cfg(test)]")[0]
        text = re.sub(r"//.*", "", text)
        uses = set(re.findall(r"\bcrate::([a-z_]+)", text))
        # `use crate::{a, b::c}` groups
        for group in re.findall(r"use crate::\{([^}]*)\}", text):
            uses.update(re.findall(r"(?:^|,)\s*([a-z_]+)", group))
        # `super::` from a nested file reaches its own top module: not an edge
        edges.setdefault(top, set()).update(u for u in uses if u != top)

modules = sorted(edges)
for module in modules:
    print(f"{module} -> {', '.join(sorted(edges[module])) or '(nothing)'}")

# Tarjan's strongly connected components.
index, low, stack, on_stack, sccs, counter = {}, {}, [], set(), [], [0]

def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
        if w not in edges:
            continue
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        sccs.append(component)

sys.setrecursionlimit(10000)
for module in modules:
    if module not in index:
        visit(module)
cycles = [sorted(c) for c in sccs if len(c) > 1]
print()
print("cycles:", "none" if not cycles else "; ".join(" <-> ".join(c) for c in cycles))
sys.exit(1 if cycles else 0)
