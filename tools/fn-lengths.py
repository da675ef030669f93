#!/usr/bin/env python3
"""Lines per `fn` in Rust files, from the `fn` line to its closing brace (brace matching,
ignoring braces in strings/chars/comments roughly), outside #[cfg(test)] modules."""
import re, sys
def fns(path):
    src = open(path).read().split('\n')
    out = []
    in_test_mod_depth = None
    depth = 0
    i = 0
    stack = []  # (name, start_line, depth_at_open)
    pending = None  # fn signature seen, waiting for '{'
    test_attr = False
    for n, line in enumerate(src, 1):
        code = re.sub(r'//.*', '', line)
        code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
        code = re.sub(r"'(\\.|[^'\\])'", "''", code)
        if re.match(r'\s*#\[cfg\(test\)\]', code):
            test_attr = True
        m = re.search(r'\bfn\s+(\w+)', code)
        if m and pending is None:
            pending = (m.group(1), n)
        for ch in code:
            if ch == '{':
                if test_attr and in_test_mod_depth is None and re.search(r'\bmod\b', code):
                    in_test_mod_depth = depth
                    test_attr = False
                if pending is not None:
                    stack.append((pending[0], pending[1], depth))
                    pending = None
                depth += 1
            elif ch == '}':
                depth -= 1
                if stack and stack[-1][2] == depth:
                    name, start, _ = stack.pop()
                    if in_test_mod_depth is None:
                        out.append((n - start + 1, name, path, start))
                if in_test_mod_depth is not None and depth == in_test_mod_depth:
                    in_test_mod_depth = None
            elif ch == ';' and pending is not None and not stack or (ch == ';' and pending is not None and code.strip().endswith(';') and '{' not in code):
                pending = None  # declaration without body (trait item)
    return out
allf = []
for p in sys.argv[1:]:
    if p.endswith('tests.rs'):
        continue
    allf += fns(p)
for l, name, path, start in sorted(allf, reverse=True)[:8]:
    print(f"{l:4d}  {name}  {path}:{start}")
