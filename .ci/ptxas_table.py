"""Reads `nvcc -Xptxas -v` output on stdin, prints one table row per kernel (markdown):
registers, static shared memory, stack frame and spills. Usage (.ci/run does this):
    nvcc -arch=sm_90 -Xptxas -v -c csrc/x.cu -o /dev/null 2>&1 | python .ci/ptxas_table.py csrc/x.cu
Exits non-zero if nvcc printed an error, or if no kernel was reported."""

import re
import subprocess
import sys

text = sys.stdin.read()
source = sys.argv[1] if len(sys.argv) > 1 else "-"
if re.search(r"\berror\b", text):
    print(text)
    sys.exit(f"ptxas_table: nvcc failed on {source}")

rows, name = [], None
for line in text.splitlines():
    if m := re.search(r"Compiling entry function '(\w+)'", line):
        name = m.group(1)
    elif name and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
        stack, st, ld = m.groups()
    elif name and (m := re.search(r"Used (\d+) registers", line)):
        smem = re.search(r"(\d+) bytes smem", line)
        rows.append((name, m.group(1), smem.group(1) if smem else "0", stack, st, ld))
        name = None
if not rows:
    print(text)
    sys.exit(f"ptxas_table: no kernel found in the output for {source}")
names = subprocess.run(["c++filt"], input="\n".join(r[0] for r in rows), capture_output=True, text=True).stdout.split("\n")
print(f"| {source} kernel | registers | smem bytes | stack bytes | spill stores | spill loads |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")



def without_arguments(sig):
    """'void f<T>(A, B)' -> 'f<T>': drop the return type and the trailing (argument list)."""
    depth = 0
    for i in range(len(sig) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(sig[i], 0)
        if depth == 0:
            sig = sig[:i]
            break
    return sig.removeprefix("void ")


for row, demangled in zip(rows, names):
    short = without_arguments(demangled.replace("(anonymous namespace)::", "").replace("mini_dlm::", ""))
    print(f"| `{short}` | " + " | ".join(row[1:]) + " |")
