#!/bin/bash
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; REPO="$(cd "$HERE/../.." && pwd)"
# usage: run-chrome.sh <rust-peer-binary> <outdir>   env: N SECS MIC DC MDNS OFFER_POLICY
set -u
BIN=$1; OUT=$2; mkdir -p $OUT
SECS=${SECS:-25}
$REPO/target/debug/parlor serve --listen 127.0.0.1:0 --dev-key pk_test_x > $OUT/parlor.log 2>&1 &
SP=$!
for i in $(seq 50); do grep -q 'listening on' $OUT/parlor.log && break; sleep 0.1; done
URL=$(grep -o 'ws://[0-9.:]*' $OUT/parlor.log | head -1)
ROOM=room-$RANDOM
RROOMS=$ROOM; if [ -n "${PER_PAGE_ROOM:-}" ]; then RROOMS=$(for i in $(seq 0 $((${N:-1}-1))); do printf "%s-%s," $ROOM $i; done | sed "s/,$//"); fi
PARLOR_URL=$URL ROOM=$RROOMS RUN_SECS=$((SECS+6)) $BIN > $OUT/rust.log 2>&1 &
RP=$!
sleep 1
PARLOR_URL=$URL ROOM=$ROOM SECS=$SECS node $HERE/driver/chrome.mjs > $OUT/chrome.json 2> $OUT/chrome.err &
CP=$!
if [ -n "${CPU_AT:-}" ]; then  # CPU window: utime+stime of the rust peer over 20 s starting at CPU_AT s
  sleep $CPU_AT; a=$(awk '{print $14+$15}' /proc/$RP/stat); sleep 20; b=$(awk '{print $14+$15}' /proc/$RP/stat)
  echo "CPU ticks=$((b-a)) over 20s clk_tck=$(getconf CLK_TCK) pct=$(echo "scale=2; ($b-$a)*100/$(getconf CLK_TCK)/20" | bc) rss_kb=$(awk '/VmRSS/{print $2}' /proc/$RP/status) threads=$(awk '/Threads/{print $2}' /proc/$RP/status)" > $OUT/cpu.txt
fi
wait $CP
wait $RP
kill $SP; wait $SP 2>/dev/null
grep -E 'MYID|SUMMARY|ERROR|glare|offer|answer|peer joined' $OUT/rust.log | head -40
cat $OUT/chrome.json; tail -3 $OUT/chrome.err; cat $OUT/cpu.txt 2>/dev/null
