#!/usr/bin/env python3
"""Functions in src/ and crates/ over LIMIT lines, by brace matching (strings, chars and comments skipped).

With --check: fail on any such function not listed in RATCHET, or listed but now longer than
its entry; a listed function that fell within the limit must leave the list. The list only
shrinks (issue 23: no function over 120 lines)."""
import os
import re
import sys

LIMIT = 120
# file:function -> its length when listed; to be split, never to grow. Empty since every
# function was split (issue 23): a new long function fails CI.
RATCHET = {}

FN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return re.sub(r"//.*", "", line)


def lengths(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.strip().endswith(";"):
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            code = strip(lines[j])
            for ch in code:
                if ch == "{":
                    depth, started = depth + 1, True
                elif ch == "}":
                    depth -= 1
            if started and depth <= 0:
                yield m.group(6), i + 1, j - i + 1
                break
            if not started and code.strip().endswith(";"):
                break


def main():
    long = {}
    for root, _, files in (w for top in ("src", "crates") for w in os.walk(top)):
        for f in sorted(files):
            if f.endswith(".rs"):
                p = os.path.join(root, f)
                for name, line, n in lengths(p):
                    if n > LIMIT:
                        long[f"{p}:{name}"] = (n, line)
    if "--check" not in sys.argv:
        for k, (n, line) in sorted(long.items(), key=lambda x: -x[1][0]):
            print(f"{n:5} {k} (line {line})")
        return 0
    fail = 0
    for k, (n, line) in sorted(long.items()):
        if k not in RATCHET:
            print(f"function length: {k} (line {line}) is {n} lines, over {LIMIT}: split it into its phases")
            fail = 1
        elif n > RATCHET[k]:
            print(f"function length: {k} grew to {n} lines (listed at {RATCHET[k]}): split it, do not grow it")
            fail = 1
    for k in sorted(set(RATCHET) - set(long)):
        print(f"function length: {k} is within {LIMIT} lines now: remove it from scripts/fn-lengths.py")
        fail = 1
    if not fail:
        print(f"function length: none over {LIMIT} lines but the {len(RATCHET)} listed, none grown")
    return fail


if __name__ == "__main__":
    sys.exit(main())
