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
python3 - "$out" <<'PY'
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
PY
rm -rf "$out"
