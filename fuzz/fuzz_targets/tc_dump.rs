//! qdisc and class dumps as the agent reads them off its netlink socket
//! (`kernel::tc::dump::dump`, the minimal parser that keeps every message and the raw
//! `TCA_OPTIONS` bytes), then what the agent does with the snapshot (`tree::check`: restorable
//! or not, the default leaf, the comparison with a later dump, the journal's JSON).
//!
//! Input: byte 0 is the number of datagrams of the qdisc dump (mod 9; the rest, up to 8, are the
//! class dump's), bytes 1..5 the device index (little-endian), then the datagrams, each a
//! little-endian `u16` length and its bytes (`netlink::frames`); sequence numbers are relative
//! to the dump's own (0 = this dump's, see `netlink`).
//!
//! Invariants beyond the tree's: a dump only returns objects of the device it asked for, with
//! the kind's trailing NULs trimmed; an error is `InvalidData` (malformed) or the kernel's
//! errno, never a hang.
#![no_main]

use chaos_agent::kernel::tc::QdiscTree;
use chaos_agent::kernel::tc::dump::{RTM_GETQDISC, RTM_GETTCLASS};
use chaos_agent_fuzz::netlink::{MAX_FRAMES, frames, run_dump};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let n_qdisc = usize::from(data[0]) % (MAX_FRAMES + 1);
    let ifindex = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let (qdisc_frames, rest) = frames(&data[5..], n_qdisc);
    let (class_frames, _) = frames(rest, MAX_FRAMES);
    let mut dumps = Vec::new();
    for (request, f) in [
        (RTM_GETQDISC, &qdisc_frames),
        (RTM_GETTCLASS, &class_frames),
    ] {
        let Some(got) = run_dump(request, ifindex, f) else {
            return;
        };
        match got {
            Ok(objs) => {
                for o in &objs {
                    assert!(!o.kind.ends_with('\0'), "{o:?}");
                }
                dumps.push(objs);
            }
            Err(e) => {
                assert!(
                    e.kind() == std::io::ErrorKind::InvalidData || e.raw_os_error().is_some(),
                    "{e:?}"
                );
                return;
            }
        }
    }
    let classes = dumps.pop().unwrap_or_default();
    let qdiscs = dumps.pop().unwrap_or_default();
    chaos_agent_fuzz::tree::check(&QdiscTree {
        ifindex,
        qdiscs,
        classes,
    });
});
