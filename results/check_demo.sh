#!/usr/bin/env bash
# Maintainer check (not run by CI): does a fresh copy of the committed code print the README's demo table?
#   bash results/check_demo.sh          (from anywhere in the repo; as long as `bash demo.sh` itself)
# Exports HEAD into a scratch folder (what a fresh clone gets: no data/, no out/), runs `bash demo.sh`
# there, and diffs the table it prints (header, rows and the token line) against the first table of HEAD's
# README.md (the demo's). demo.sh sets up .venv in the copy (PYTHON=python: use yours instead). Exit 0: identical; 1: they differ (the diff is printed);
# 2: a table is missing; else: demo.sh failed. Uncommitted changes are not checked. KEEP=1 keeps the
# scratch folder (its out/ and demo.log); THREADS and PES are passed on to demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d "${TMPDIR:-/tmp}/check_demo.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "scratch folder: $scratch"; else trap 'rm -rf "$scratch"' EXIT; fi
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "note: uncommitted changes are not checked"
echo "checking $(git rev-parse --short HEAD) in $scratch"
git archive HEAD | tar -x -C "$scratch"

# the table: from the first "| checkpoint | pe |" line after the line starting with $2 to the "Mean cross-entropy" line
table() { awk -v anchor="$2" 'BEGIN {armed = (anchor == "")} index($0, anchor) == 1 {armed = 1}
                                                          armed && /^\| checkpoint \| pe \|/ {on = 1}
                                                          on {print} on && /^Mean cross-entropy/ {exit}' "$1"; }

(cd "$scratch" && bash demo.sh) 2>&1 | tee "$scratch/demo.log"
table "$scratch/README.md" '' > "$scratch/readme_table.md"
table "$scratch/demo.log" '' > "$scratch/demo_table.md"
for f in readme_table.md demo_table.md; do
    [ -s "$scratch/$f" ] || { echo "check_demo: no demo table found for $f"; exit 2; }
done
if diff -u --label 'README.md' --label 'bash demo.sh (fresh copy)' "$scratch/readme_table.md" "$scratch/demo_table.md"; then
    echo "check_demo: the demo prints the README's table exactly"
else
    echo "check_demo: the demo's table differs from the README's (diff above)"
    exit 1
fi
