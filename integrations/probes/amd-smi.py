#!/usr/bin/env python3
"""Vigil exec probe for AMD Instinct GPUs, through `amd-smi`.

Use as: vigil-agent --cards 'exec:python3 /path/to/amd-smi.py'

Runs `amd-smi static --json` and `amd-smi metric --json` and prints one
Vigil probe document (schema version 1, see docs/probes.md). Standard library
only. For tests and replays, `--sample FILE` (given once for each recorded
output, static and metric, in any order) reads recorded JSON instead of
running the tool.

Mapping: gfx_activity -> utilization_percent; used_vram -> memory_used_bytes;
hotspot (else edge) temperature -> temperature_c; socket_power -> power_w;
total ECC counts -> ecc_uncorrected / ecc_corrected; throttle_status
THROTTLED -> throttle_thermal; pcie width / max_pcie_width; an XGMI error
status -> an "nvlink" error event. Exits non-zero, with the reason on stderr,
when amd-smi cannot run or prints something unreadable.
"""

import argparse
import json
import subprocess
import sys

MB = 1 << 20
UNITS = {"B": 1, "KB": 1 << 10, "MB": MB, "GB": 1 << 30}


def value(v):
    """A reading: {"value": x, "unit": u}, a number, "12 W", or N/A -> None."""
    if isinstance(v, dict):
        v = v.get("value")
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        head = v.strip().split(" ")[0]
        try:
            return float(head)
        except ValueError:
            return None
    return None


def size_bytes(v):
    unit = v.get("unit", "MB") if isinstance(v, dict) else "MB"
    if isinstance(v, str) and len(v.split()) == 2:
        unit = v.split()[1]
    n = value(v)
    return None if n is None else int(n * UNITS.get(str(unit).upper(), MB))


def run(args):
    try:
        out = subprocess.run(["amd-smi"] + args + ["--json"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        sys.exit("amd-smi %s: %s" % (" ".join(args), e))
    if out.returncode != 0:
        sys.exit("amd-smi %s failed (%d): %s" % (" ".join(args), out.returncode, out.stderr.strip()))
    return load(out.stdout, "amd-smi " + " ".join(args))


def load(text, what):
    try:
        doc = json.loads(text)
    except ValueError as e:
        sys.exit("%s: not JSON: %s" % (what, e))
    # Some versions wrap the list: {"gpu_data": [...]}.
    if isinstance(doc, dict):
        doc = doc.get("gpu_data", [doc])
    if not isinstance(doc, list):
        sys.exit("%s: expected a list of GPUs" % what)
    return doc


def merge(*outputs):
    gpus = {}
    for out in outputs:
        for entry in out:
            if isinstance(entry, dict) and isinstance(entry.get("gpu"), int):
                gpus.setdefault(entry["gpu"], {}).update(entry)
    return gpus


def card(index, g):
    asic = g.get("asic") or {}
    bus = g.get("bus") or {}
    usage = g.get("usage") or {}
    power = g.get("power") or {}
    temp = g.get("temperature") or {}
    pcie = g.get("pcie") or {}
    ecc = g.get("ecc") or {}
    mem = g.get("mem_usage") or {}
    vram = g.get("vram") or {}
    t = value(temp.get("hotspot"))
    if t is None:
        t = value(temp.get("edge"))
    total = size_bytes(mem.get("total_vram")) or size_bytes(vram.get("size"))
    return {
        "index": index,
        "uuid": g.get("uuid") or asic.get("asic_serial") or "",
        "model": asic.get("market_name") or "",
        "pci_bus_id": bus.get("bdf") or g.get("bdf") or "",
        "memory_total_bytes": total,
        "utilization_percent": value(usage.get("gfx_activity")),
        "memory_used_bytes": size_bytes(mem.get("used_vram")),
        "temperature_c": t,
        "power_w": value(power.get("socket_power")),
        "ecc_uncorrected": value(ecc.get("total_uncorrectable_count")),
        "ecc_corrected": value(ecc.get("total_correctable_count")),
        "throttle_thermal": str(power.get("throttle_status", "")).upper() == "THROTTLED",
        "pcie_link_width": value(pcie.get("width")),
        "pcie_link_width_max": value(bus.get("max_pcie_width")),
        "unreachable": False,
    }


def ints(c):
    for k, v in c.items():
        if isinstance(v, float) and k not in ("utilization_percent", "temperature_c", "power_w"):
            c[k] = int(v)
    return c


def document(gpus):
    cards, errors = [], []
    for index in sorted(gpus):
        g = gpus[index]
        cards.append(ints(card(index, g)))
        xgmi = str(g.get("xgmi_err", ""))
        if xgmi.endswith("_ERROR") or xgmi.endswith("_MULTIPLE_ERRORS"):
            errors.append({"card": index, "signal": "nvlink", "message": "XGMI error status " + xgmi})
    return {"vigil_probe": 1, "vendor": "amd", "cards": cards, "errors": errors}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sample", action="append", metavar="FILE",
                   help="read recorded amd-smi JSON instead of running it (static and metric)")
    a = p.parse_args()
    if a.sample:
        outputs = []
        for path in a.sample:
            try:
                with open(path, encoding="utf-8") as f:
                    outputs.append(load(f.read(), path))
            except OSError as e:
                sys.exit("%s: %s" % (path, e))
    else:
        outputs = [run(["static"]), run(["metric"])]
    json.dump(document(merge(*outputs)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
