//! Kernel log lines from the NVIDIA driver: XIDs, NVSwitch SXIDs and
//! "fallen off the bus" messages.
//!
//! Lines may come from `/dev/kmsg` (`level,seq,usec,flag[,...];message`),
//! `dmesg` (`[ 123.456] message`), `dmesg -T` or syslog
//! (`Mon DD HH:MM:SS host kernel: [ 123.456] message`): the parser looks for
//! the driver's text anywhere in the line. Events carry the PCI address in
//! one normalized form (`0000:3b:00`, see [`normalize_bus_id`]), which
//! [`card_for`] matches against a probe's inventory.

use vigil_core::model::{CardInfo, Signal};

/// An error the driver logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    /// Normalized PCI address of the device that logged it.
    pub bus_id: String,
    /// `Xid(code)` for an XID line, `GpuLost` for a fallen-off-the-bus line
    /// without an XID, `Nvlink` for an NVSwitch SXID.
    pub signal: Signal,
    /// Set for an NVSwitch SXID: the device is a switch, not a card.
    pub nvswitch: Option<SxidInfo>,
    /// The driver's message, from `NVRM:` or `nvidia-nvswitchN:` on.
    pub message: String,
}

/// What an NVSwitch SXID line says besides its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SxidInfo {
    /// `N` of `nvidia-nvswitchN`.
    pub switch: u32,
    pub code: u32,
    pub fatal: bool,
}

/// A PCI address without its function: domain, bus, device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddr {
    /// Reads `domain:bus:device[.function]` (any case, domain of 4 or 8
    /// digits, as the kernel log, NVML and `nvidia-smi` print it) or
    /// `bus:device.function`, with an optional `PCI:` prefix.
    pub fn parse(s: &str) -> Option<PciAddr> {
        let s = s.trim();
        let s = s.strip_prefix("PCI:").unwrap_or(s);
        let (head, function) = match s.rsplit_once('.') {
            Some((h, f)) => (h, Some(f)),
            None => (s, None),
        };
        if let Some(f) = function
            && (f.is_empty() || f.len() > 1 || !f.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return None;
        }
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] => (*d, *b, *v),
            // bus:device.function, only with the function (else it could
            // be a vendor:device id such as 10de:26b5).
            [b, v] if function.is_some() => ("0", *b, *v),
            _ => return None,
        };
        let hex = |x: &str, max: usize| {
            if x.is_empty() || x.len() > max || !x.chars().all(|c| c.is_ascii_hexdigit()) {
                None
            } else {
                u32::from_str_radix(x, 16).ok()
            }
        };
        Some(PciAddr {
            domain: hex(domain, 8)?,
            bus: u8::try_from(hex(bus, 2)?).ok()?,
            device: u8::try_from(hex(device, 2)?).ok()?,
        })
    }
}

impl std::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// One form for every spelling of a PCI address, so that the kernel log's
/// `0000:3b:00` and NVML's or `nvidia-smi`'s `00000000:3B:00.0` compare
/// equal: lower-case `dddd:bb:dd`, without the function. `None` when `s`
/// is not a PCI address.
pub fn normalize_bus_id(s: &str) -> Option<String> {
    PciAddr::parse(s).map(|a| a.to_string())
}

/// The inventory index of the card an event is about, by PCI address.
/// `None` for an NVSwitch event or an address no card has.
pub fn card_for(event: &KernelEvent, inventory: &[CardInfo]) -> Option<u32> {
    if event.nvswitch.is_some() {
        return None;
    }
    inventory
        .iter()
        .find(|c| normalize_bus_id(&c.pci_bus_id).as_deref() == Some(event.bus_id.as_str()))
        .map(|c| c.index)
}

/// The message of a `/dev/kmsg` record (after the `;`), or the line itself
/// when it is not one. Dictionary lines (` KEY=value`) give `None`.
pub fn kmsg_message(line: &str) -> Option<&str> {
    let line = line.trim_end_matches(['\n', '\r']);
    if let Some(rest) = line.strip_prefix(' ')
        && let Some((key, _)) = rest.split_once('=')
        && !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    if let Some((head, msg)) = line.split_once(';') {
        let mut f = head.split(',');
        let numeric = |x: Option<&str>| {
            x.is_some_and(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        };
        if numeric(f.next()) && numeric(f.next()) && numeric(f.next()) && f.next().is_some() {
            return Some(msg);
        }
    }
    Some(line)
}

/// Parses one log line. Lines that carry no driver error give `None`, as do
/// the follow-up `Severity` and `Data` lines of an SXID.
pub fn parse_line(line: &str) -> Option<KernelEvent> {
    let msg = kmsg_message(line)?;
    // /dev/kmsg escapes a newline inside a record as \x0a.
    let msg = msg.replace("\\x0a", "\n");
    if let Some(at) = msg.find("NVRM: Xid (") {
        return parse_xid(&msg[at..]);
    }
    if let Some(at) = msg.find(": SXid (") {
        return parse_sxid(&msg, at);
    }
    if msg.contains("fallen off the bus") && !msg.contains("Xid") {
        let at = msg.find("NVRM:")?;
        let text = &msg[at..];
        let bus_id = text.split_whitespace().find_map(address_token)?;
        return Some(KernelEvent {
            bus_id,
            signal: Signal::GpuLost,
            nvswitch: None,
            message: one_line(text),
        });
    }
    None
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A whitespace-separated token that is a full PCI address (with a domain,
/// or with a function), such as `0000:2b:00.0:` or `PCI:0000:9b:00`.
fn address_token(tok: &str) -> Option<String> {
    let t = tok.trim_end_matches([':', ',', '.', ')']);
    let t = t.trim_start_matches('(');
    if t.matches(':').count() < 2 && !t.contains('.') {
        return None;
    }
    normalize_bus_id(t)
}

/// `NVRM: Xid (<dev>): <code>, <text>`.
fn parse_xid(text: &str) -> Option<KernelEvent> {
    let rest = text.strip_prefix("NVRM: Xid (")?;
    let (dev, rest) = rest.split_once("):")?;
    // `PCI:0000:01:00 GPU-I:05` (MIG) names the card by its first token.
    let bus_id = normalize_bus_id(dev.split_whitespace().next()?)?;
    let code = rest.trim_start().split(',').next()?.trim().parse().ok()?;
    Some(KernelEvent {
        bus_id,
        signal: Signal::Xid(code),
        nvswitch: None,
        message: one_line(text),
    })
}

/// `nvidia-nvswitchN: SXid (PCI:dddd:bb:dd.f): <code>, <Fatal|Non-fatal>, <text>`.
fn parse_sxid(msg: &str, at: usize) -> Option<KernelEvent> {
    let name = msg[..at].split_whitespace().last()?;
    let switch = name.strip_prefix("nvidia-nvswitch")?.parse().ok()?;
    let rest = &msg[at + ": SXid (".len()..];
    let (dev, rest) = rest.split_once("):")?;
    let bus_id = normalize_bus_id(dev)?;
    let mut fields = rest.split(',').map(str::trim);
    let code = fields.next()?.parse().ok()?;
    let fatal = match fields.next()? {
        "Fatal" => true,
        "Non-fatal" => false,
        _ => return None,
    };
    let start = msg[..at].rfind(name).unwrap_or(0);
    Some(KernelEvent {
        bus_id,
        signal: Signal::Nvlink,
        nvswitch: Some(SxidInfo {
            switch,
            code,
            fatal,
        }),
        message: one_line(&msg[start..]),
    })
}

/// A line-by-line parser that also recognizes the three-line form of
/// "fallen off the bus", where the address is on the first line:
///
/// ```text
/// NVRM: The NVIDIA GPU 0000:b3:00.0
/// NVRM: (PCI ID: 10de:26b5) installed in this system has
/// NVRM: fallen off the bus and is not responding to commands.
/// ```
#[derive(Debug, Default)]
pub struct LineParser {
    pending: Option<(String, String, u8)>,
}

impl LineParser {
    pub fn new() -> LineParser {
        LineParser::default()
    }

    /// Feeds one line; returns the event it completes, if any.
    pub fn feed(&mut self, line: &str) -> Option<KernelEvent> {
        if let Some(ev) = parse_line(line) {
            self.pending = None;
            return Some(ev);
        }
        let msg = kmsg_message(line)?;
        if let Some(at) = msg.find("NVRM: The NVIDIA GPU ") {
            let text = &msg[at..];
            self.pending = text
                .split_whitespace()
                .find_map(address_token)
                .map(|bus| (bus, text.trim().to_owned(), 3));
            return None;
        }
        let (bus, mut text, left) = self.pending.take()?;
        if let Some(at) = msg.find("NVRM:") {
            text.push(' ');
            text.push_str(msg[at + "NVRM:".len()..].trim());
        }
        if msg.contains("fallen off the bus") {
            return Some(KernelEvent {
                bus_id: bus,
                signal: Signal::GpuLost,
                nvswitch: None,
                message: text,
            });
        }
        if left > 1 {
            self.pending = Some((bus, text, left - 1));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KMSG: &str = include_str!("../../tests/samples/kmsg.txt");

    fn card(index: u32, bus: &str) -> CardInfo {
        CardInfo {
            index,
            uuid: format!("GPU-{index}"),
            vendor: "nvidia".to_owned(),
            model: "H100".to_owned(),
            memory_total_bytes: 0,
            pci_bus_id: bus.to_owned(),
        }
    }

    #[test]
    fn bus_ids_normalize_across_spellings() {
        for s in [
            "0000:3b:00",
            "00000000:3B:00.0",
            "0000:3B:00.0",
            "PCI:0000:3b:00",
            "3b:00.0",
        ] {
            assert_eq!(normalize_bus_id(s).as_deref(), Some("0000:3b:00"), "{s}");
        }
        assert_eq!(
            normalize_bus_id("0001:9b:1c").as_deref(),
            Some("0001:9b:1c")
        );
        for bad in [
            "",
            "10de:26b5",
            "0000:3b",
            "zz:00:00",
            "0000:3b:00.",
            "0000:3b:100",
            "GPU-1234",
        ] {
            assert_eq!(normalize_bus_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn xid_lines_in_every_log_format() {
        let cases = [
            (
                "4,1234,5678,-;NVRM: Xid (PCI:0000:18:00): 48, pid=1234, name=python, An uncorrectable double bit error",
                "0000:18:00",
                48,
            ),
            (
                "[6781741.548779] NVRM: Xid (PCI:0000:91:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
                "0000:91:00",
                79,
            ),
            (
                "[Sun Feb 23 16:24:18 2025] NVRM: Xid (PCI:0000:9b:00): 119, pid=2024380, name=nvidia-smi, Timeout after 6s of waiting for RPC response from GPU4 GSP!",
                "0000:9b:00",
                119,
            ),
            (
                "Nov 22 18:29:55 hostname kernel: [ 966.503025] NVRM: Xid (0000:01:00): 31, Ch 0000000b, engmask 00000120, intr 10000000",
                "0000:01:00",
                31,
            ),
            (
                "NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=7194, Contained: CE User Channel (0x9). RST: No, D-RST: No",
                "0000:01:00",
                94,
            ),
            (
                "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate.",
                "0000:10:1c",
                63,
            ),
        ];
        for (line, bus, code) in cases {
            let ev = parse_line(line).unwrap_or_else(|| panic!("no event from {line:?}"));
            assert_eq!(ev.bus_id, bus, "{line}");
            assert_eq!(ev.signal, Signal::Xid(code), "{line}");
            assert!(ev.message.starts_with("NVRM: Xid ("), "{}", ev.message);
            assert!(ev.nvswitch.is_none());
        }
    }

    #[test]
    fn fallen_off_the_bus_without_an_xid_is_gpu_lost() {
        for line in [
            "NVRM: GPU 0000:2b:00.0: GPU has fallen off the bus.",
            "[ 12.3] NVRM: GPU at 0000:2b:00.0 has fallen off the bus.",
            "4,99,100,-;NVRM: The NVIDIA GPU 0000:2b:00.0\\x0aNVRM: (PCI ID: 10de:26b5) installed in this system has\\x0aNVRM: fallen off the bus and is not responding to commands.",
        ] {
            let ev = parse_line(line).unwrap_or_else(|| panic!("no event from {line:?}"));
            assert_eq!(
                (ev.bus_id.as_str(), ev.signal),
                ("0000:2b:00", Signal::GpuLost),
                "{line}"
            );
            assert!(!ev.message.contains('\n'));
        }
    }

    #[test]
    fn three_line_fallen_off_the_bus_needs_the_line_parser() {
        let lines = [
            "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
            "               NVRM: (PCI ID: 10de:26b5) installed in this system has",
            "               NVRM: fallen off the bus and is not responding to commands.",
        ];
        let mut p = LineParser::new();
        assert_eq!(p.feed(lines[0]), None);
        assert_eq!(p.feed(lines[1]), None);
        let ev = p.feed(lines[2]).expect("event on the third line");
        assert_eq!(
            (ev.bus_id.as_str(), ev.signal),
            ("0000:b3:00", Signal::GpuLost)
        );
        assert!(
            ev.message.contains("10de:26b5") && ev.message.contains("fallen off"),
            "{}",
            ev.message
        );
        // Unrelated lines in between end the wait after three lines.
        let mut p = LineParser::new();
        p.feed(lines[0]);
        for _ in 0..3 {
            assert_eq!(p.feed("[ 1.0] eth0: link up"), None);
        }
        assert_eq!(p.feed(lines[2]), None);
    }

    #[test]
    fn sxid_lines_name_the_switch_and_follow_ups_are_skipped() {
        let ev = parse_line("[6781753.400584] nvidia-nvswitch1: SXid (PCI:0000:06:00.0): 20034, Fatal, Link 48 LTSSM Fault Up")
            .expect("sxid");
        assert_eq!(ev.bus_id, "0000:06:00");
        assert_eq!(ev.signal, Signal::Nvlink);
        assert_eq!(
            ev.nvswitch,
            Some(SxidInfo {
                switch: 1,
                code: 20034,
                fatal: true
            })
        );
        assert!(
            ev.message.starts_with("nvidia-nvswitch1: SXid"),
            "{}",
            ev.message
        );
        let nf = parse_line("nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error (First)")
            .expect("non-fatal sxid");
        assert_eq!(
            nf.nvswitch.map(|s| (s.switch, s.code, s.fatal)),
            Some((3, 12028, false))
        );
        assert_eq!(
            parse_line(
                "nvidia-nvswitch2: SXid (PCI:0000:07:00.0): 20034, Severity 1 Engine instance 60 Sub-engine instance 00"
            ),
            None
        );
        assert_eq!(
            parse_line(
                "nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 20034, Data {0x10000000, 0x10000000}"
            ),
            None
        );
    }

    #[test]
    fn other_lines_give_nothing() {
        for line in [
            "",
            " SUBSYSTEM=pci",
            "6,1,2,-;usb 1-1: new high-speed USB device",
            "NVRM: GPU at PCI:0000:9b:00: GPU-509665ad-b600-ac93-3616-d754b23d636d",
            "NVRM: Xid (PCI:0000:9b:00): notanumber, whatever",
            "NVRM: Xid (garbage): 79, GPU has fallen off the bus.",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn recorded_kmsg_maps_to_cards_by_bus_id() {
        let inventory = [
            card(0, "00000000:18:00.0"),
            card(1, "00000000:3B:00.0"),
            card(2, "00000000:DB:00.0"),
        ];
        let mut p = LineParser::new();
        let events: Vec<KernelEvent> = KMSG.lines().filter_map(|l| p.feed(l)).collect();
        let mapped: Vec<(Option<u32>, Signal)> = events
            .iter()
            .map(|e| (card_for(e, &inventory), e.signal))
            .collect();
        assert_eq!(
            mapped,
            [
                (Some(0), Signal::Xid(48)),
                (Some(1), Signal::Xid(79)),
                (Some(1), Signal::GpuLost),
                (None, Signal::Nvlink),
                (Some(2), Signal::Xid(94)),
            ]
        );
        assert!(events[0].message.contains("double bit error"));
    }
}
