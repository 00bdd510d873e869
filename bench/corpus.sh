#!/usr/bin/env bash
# Plays every scenario in scenarios/ through `vigil demo` and prints verdict
# quality: precision and recall of localization, false quarantines, and
# detection latency per fault kind (scenario seconds). Used for
# docs/benchmarks.md.
#
#   bash bench/corpus.sh [SPEED]     (default speed 10; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
speed="${1:-10}"
vigil=./target/release/vigil
cargo build --release -q -p vigil-cli
out=$(mktemp -d)
for s in scenarios/*.toml; do
  "$vigil" demo --scenario "$s" --speed "$speed" -o json > "$out/$(basename "$s" .toml).json"
done
SPEED="$speed" python3 - "$out" <<'PY'
import json, os, sys, statistics
d = sys.argv[1]
rows, lat = [], {}
tp = fp = exp = loc = fq = 0
for f in sorted(os.listdir(d)):
    r = json.load(open(os.path.join(d, f)))
    s = r["score"]
    rows.append((f[:-5], s["incidents"], s["false_incidents"], s["expected_incidents"], s["localized"], s["false_quarantines"]))
    tp += s["incidents"] - s["false_incidents"]; fp += s["false_incidents"]
    exp += s["expected_incidents"]; loc += s["localized"]; fq += s["false_quarantines"]
    for v in s["verdicts"]:
        if v["expect"] in ("card", "node") and v["latency_s"] is not None:
            lat.setdefault(v["fault"]["kind"], []).append(v["latency_s"])
print("| scenario | incidents | false | faults to localize | localized | false quarantines |")
print("|---|---|---|---|---|---|")
for row in rows:
    print("| %s | %d | %d | %d | %d | %d |" % row)
prec = tp / (tp + fp) if tp + fp else 1.0
rec = loc / exp if exp else 1.0
print()
print("precision %.3f (%d/%d), recall %.3f (%d/%d), false quarantines %d" % (prec, tp, tp + fp, rec, loc, exp, fq))
print()
print("| fault kind | samples | latency median (s) | max (s) |")
print("|---|---|---|---|")
for k in sorted(lat):
    v = lat[k]
    print("| %s | %d | %.2f | %.2f |" % (k, len(v), statistics.median(v), max(v)))

# Phase durations of the recoveries (scenario seconds; wall seconds x speed).
from datetime import datetime
def ts(x):
    return datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()
speed = float(os.environ.get("SPEED", "1"))
print()
print("| scenario | incident | action | isolate (s) | waiting for capacity (s) | restore (s) | detect to resume (s) | checkpoint | lost steps |")
print("|---|---|---|---|---|---|---|---|---|")
for f in sorted(os.listdir(d)):
    r = json.load(open(os.path.join(d, f)))
    for inc in r["incidents"]:
        ph = {p["name"]: p for p in inc["phases"]}
        if "restore" not in ph and "waiting_for_capacity" not in ph:
            continue
        def dur(name):
            p = ph.get(name)
            if not p or not p.get("end"):
                return "open" if p else "-"
            return "%.2f" % ((ts(p["end"]) - ts(p["start"])) * speed)
        total = "-"
        if inc.get("resolved_at"):
            total = "%.2f" % ((ts(inc["resolved_at"]) - ts(inc["detected_at"])) * speed)
        ck = inc.get("checkpoint") or {}
        print("| %s | %s %s | %s | %s | %s | %s | %s | %s | %s |" % (
            f[:-5], inc["id"], inc["kind"], inc.get("action"), dur("isolate"),
            dur("waiting_for_capacity"), dur("restore"), total, ck.get("step", "-"),
            inc.get("lost_steps") if inc.get("lost_steps") is not None else "-"))
PY
rm -rf "$out"
