#!/usr/bin/env python3
"""Template for a Vigil exec probe: copy it, replace read_tool() and to_card().

Use as: vigil-agent --cards 'exec:python3 /path/to/my-probe.py'

The agent runs the command on every sample (about once a heartbeat) and reads
exactly one JSON document from stdout (schema version 1, see docs/probes.md):

  {"vigil_probe": 1, "vendor": "...", "cards": [...], "errors": [...]}

Rules: standard library only; exit 0 after printing the document, non-zero
with a reason on stderr when the vendor tool fails (the agent logs it and
skips that sample); finish well within a second or two; list every card on
every run with the same "index"; leave a reading out (or null) when the tool
does not have it. `--sample FILE` reads recorded tool output, for tests.

This template's pretend vendor tool prints a JSON list of devices.
"""

import argparse
import json
import subprocess
import sys

MIB = 1 << 20


def read_tool(sample):
    """The vendor tool's raw output (here: a JSON list of devices)."""
    if sample:
        with open(sample, encoding="utf-8") as f:
            return json.load(f)
    out = subprocess.run(["example-smi", "--json"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        sys.exit("example-smi failed (%d): %s" % (out.returncode, out.stderr.strip()))
    return json.loads(out.stdout)


def to_card(dev):
    """One device of the tool's output as a Vigil card."""
    card = {
        "index": dev["id"],
        "uuid": dev.get("serial", ""),
        "model": dev.get("name", ""),
        "pci_bus_id": dev.get("bus", ""),
        "unreachable": not dev.get("ok", True),
    }
    readings = {
        "memory_total_bytes": dev.get("mem_total_mib"),
        "memory_used_bytes": dev.get("mem_used_mib"),
        "utilization_percent": dev.get("busy"),
        "temperature_c": dev.get("temp"),
        "power_w": dev.get("watts"),
        "ecc_uncorrected": dev.get("ue"),
        "ecc_corrected": dev.get("ce"),
        "pcie_link_width": dev.get("link"),
        "pcie_link_width_max": dev.get("link_max"),
    }
    for k in ("memory_total_bytes", "memory_used_bytes"):
        if readings[k] is not None:
            readings[k] = int(readings[k] * MIB)
    card.update({k: v for k, v in readings.items() if v is not None})
    return card


def to_errors(dev):
    """Numbered errors the tool reports, as Vigil error events."""
    if dev.get("last_error"):
        return [{"card": dev["id"], "signal": "xid", "code": int(dev["last_error"]),
                 "message": "example-smi error %s" % dev["last_error"]}]
    return []


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sample", metavar="FILE", help="read recorded tool output")
    a = p.parse_args()
    try:
        devices = read_tool(a.sample)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        sys.exit("cannot read the tool: %s" % e)
    doc = {"vigil_probe": 1, "vendor": "example", "cards": [], "errors": []}
    for dev in devices:
        doc["cards"].append(to_card(dev))
        doc["errors"].extend(to_errors(dev))
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
