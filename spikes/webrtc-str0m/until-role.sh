#!/bin/bash
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; REPO="$(cd "$HERE/../.." && pwd)"
# usage: until-role.sh IMPOLITE|POLITE outdir [script]  — reruns until the Rust peer got that role (max 8)
ROLE=$1; OUT=$2; SCRIPT=${3:-./run-chrome.sh}
for i in 1 2 3 4 5 6 7 8; do $SCRIPT $HERE/target/release/str0m-peer $OUT >/dev/null 2>&1; grep -q "we are $ROLE" $OUT/rust.log && { echo "attempt $i"; break; }; done
grep -E 'we are|glare|watchdog|ERROR|send offer' $OUT/rust.log | cut -c1-200
grep SUMMARY $OUT/rust.log | cut -c1-800; cut -c1-1300 $OUT/*.json 2>/dev/null; cat $OUT/cpu.txt 2>/dev/null
