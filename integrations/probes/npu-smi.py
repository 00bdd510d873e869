#!/usr/bin/env python3
"""Vigil exec probe for Huawei Ascend NPUs, through `npu-smi info`.

Use as: vigil-agent --cards 'exec:python3 /path/to/npu-smi.py'

Parses the table that `npu-smi info` prints (two rows per chip: NPU id, name,
health, power and temperature; then chip id, bus id, AI Core usage, memory and
HBM usage) and prints one Vigil probe document (schema version 1, see
docs/probes.md). Standard library only. `--sample FILE` reads recorded output
instead of running the tool.

Cards are numbered in table order. Health UNKNOWN (device absent or not
started) reports the card unreachable; Warning, Alarm and Critical are
printed on stderr (npu-smi gives no error code in this table; see
`npu-smi info -t health`). HBM usage is the card's memory.
"""

import argparse
import json
import re
import subprocess
import sys

MB = 1 << 20


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def used_total(cell):
    m = re.match(r"\s*(\S+)\s*/\s*(\S+)", cell or "")
    return (num(m.group(1)), num(m.group(2))) if m else (None, None)


def parse(text):
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|") or line.startswith("+"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(cells)
    cards = []
    i = 0
    while i + 1 < len(rows):
        first, second = rows[i], rows[i + 1]
        head = first[0].split()
        # A chip's first row: "<npu id> <name>" | health | "power temp hugepages".
        if len(first) == 3 and len(head) >= 2 and head[0].isdigit() and len(second) == 3 \
                and second[0].split() and second[0].split()[0].isdigit() \
                and re.match(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$", second[1]):
            cards.append((head, first, second))
            i += 2
        else:
            i += 1
    return cards


def document(parsed):
    out, notes = [], []
    for index, (head, first, second) in enumerate(parsed):
        health = first[1].upper()
        right = first[2].split()
        power = num(right[0]) if right else None
        temp = num(right[1]) if len(right) > 1 else None
        right2 = second[2].split()
        aicore = num(right2[0]) if right2 else None
        hbm_used, hbm_total = used_total(second[2].split(None, 1)[1] if len(right2) > 1 else "")
        # The last "used / total" pair on the row is HBM.
        pairs = re.findall(r"(\S+)\s*/\s*(\S+)", second[2])
        if pairs:
            hbm_used, hbm_total = num(pairs[-1][0]), num(pairs[-1][1])
        card = {
            "index": index,
            "model": "Ascend " + head[1],
            "pci_bus_id": second[1].lower(),
            "memory_total_bytes": int(hbm_total * MB) if hbm_total is not None else None,
            "memory_used_bytes": int(hbm_used * MB) if hbm_used is not None else None,
            "utilization_percent": aicore,
            "temperature_c": temp,
            "power_w": power,
            "unreachable": health == "UNKNOWN",
            "npu_id": int(head[0]),
            "chip_id": int(second[0].split()[0]),
            "health": first[1],
        }
        if health not in ("OK", "UNKNOWN"):
            notes.append("NPU %s chip %s health %s" % (head[0], card["chip_id"], first[1]))
        out.append(card)
    return {"vigil_probe": 1, "vendor": "huawei", "cards": out, "errors": []}, notes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sample", metavar="FILE", help="read recorded `npu-smi info` output")
    a = p.parse_args()
    if a.sample:
        try:
            with open(a.sample, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            sys.exit("%s: %s" % (a.sample, e))
    else:
        try:
            r = subprocess.run(["npu-smi", "info"], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as e:
            sys.exit("npu-smi info: %s" % e)
        if r.returncode != 0:
            sys.exit("npu-smi info failed (%d): %s" % (r.returncode, r.stderr.strip()))
        text = r.stdout
    parsed = parse(text)
    if not parsed:
        sys.exit("npu-smi info: no NPU rows found in the output")
    doc, notes = document(parsed)
    for n in notes:
        sys.stderr.write(n + "\n")
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
