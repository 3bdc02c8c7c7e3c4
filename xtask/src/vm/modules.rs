//! The kernel modules the suite needs, with their dependencies read from each module's
//! `.modinfo` (the deb has no modules.dep), uncompressed for busybox's `insmod`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

/// Modules the suite needs (qdiscs, classifiers, actions, devices, socket diag for `ss -K`).
/// Their dependencies are added from each module's `.modinfo`.
const MODULES: &[&str] = &[
    "sch_netem",
    "sch_fq",
    "sch_prio",
    "sch_htb",
    "sch_tbf",
    "sch_ingress", // also provides clsact
    "cls_bpf",
    "cls_u32",
    "cls_matchall",
    "act_bpf",
    "act_mirred",
    "act_gact",
    "ifb",
    "veth",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    // The scratch disk QEMU attaches (the IO limit tests throttle it).
    "virtio_pci",
    "virtio_blk",
];

/// Module name as the kernel spells it: file stem with `-` as `_`.
fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let stem = name
        .split_once(".ko")
        .filter(|(_, rest)| matches!(*rest, "" | ".xz" | ".zst" | ".gz"))?
        .0;
    Some(stem.replace('-', "_"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// The wanted modules and their dependencies, dependencies first, as (name, uncompressed
/// image). Built-in ones are skipped. The deb has no modules.dep (depmod runs at install), so
/// dependencies come from each module's own `.modinfo`.
pub(super) fn resolve_modules(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let builtin: BTreeSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut files = Vec::new();
    walk(&dir.join("kernel"), &mut files)?;
    let by_name: HashMap<String, PathBuf> = files
        .into_iter()
        .filter_map(|p| Some((module_name(&p)?, p)))
        .collect();

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in MODULES {
        add_module(name, &by_name, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn add_module(
    name: &str,
    by_name: &HashMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let name = name.replace('-', "_");
    if builtin.contains(&name) || !seen.insert(name.clone()) {
        return Ok(());
    }
    let path = by_name
        .get(&name)
        .ok_or_else(|| anyhow!("kernel has no module {name}"))?;
    let image = decompress(path)?;
    let depends = modinfo(&image, "depends")
        .with_context(|| format!("read .modinfo of {}", path.display()))?;
    for dep in depends
        .iter()
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
    {
        add_module(dep, by_name, builtin, seen, order)?;
    }
    order.push((name, image));
    Ok(())
}

/// busybox `insmod` takes only plain ELF: Debian 6.1 ships plain `.ko`, newer kernels compress.
fn decompress(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return std::fs::read(path).with_context(|| format!("read {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("spawn {tool} to decompress {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Values of `key=` in the `.modinfo` section of a module (an ELF64 little-endian object).
fn modinfo(elf: &[u8], key: &str) -> anyhow::Result<Vec<String>> {
    let u16_at = |o: usize| -> anyhow::Result<usize> {
        Ok(u16::from_le_bytes(
            elf.get(o..o + 2)
                .ok_or_else(|| anyhow!("short ELF"))?
                .try_into()?,
        )
        .into())
    };
    let u32_at = |o: usize| -> anyhow::Result<usize> {
        Ok(u32::from_le_bytes(
            elf.get(o..o + 4)
                .ok_or_else(|| anyhow!("short ELF"))?
                .try_into()?,
        ) as usize)
    };
    let u64_at = |o: usize| -> anyhow::Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(
            elf.get(o..o + 8)
                .ok_or_else(|| anyhow!("short ELF"))?
                .try_into()?,
        ))?)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not an ELF64 object");
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let section = |i: usize| -> anyhow::Result<(usize, &[u8])> {
        let h = shoff + i * shentsize;
        let (off, size) = (u64_at(h + 0x18)?, u64_at(h + 0x20)?);
        Ok((
            u32_at(h)?,
            elf.get(off..off + size)
                .ok_or_else(|| anyhow!("section out of file"))?,
        ))
    };
    let names = section(shstrndx)?.1;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let name = names.get(name_off..).unwrap_or_default();
        if name.starts_with(b".modinfo\0") {
            let prefix = format!("{key}=");
            return Ok(data
                .split(|b| *b == 0)
                .filter_map(|s| {
                    std::str::from_utf8(s)
                        .ok()?
                        .strip_prefix(&prefix)
                        .map(str::to_owned)
                })
                .collect());
        }
    }
    bail!("no .modinfo section")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(
            module_name(Path::new("kernel/net/sched/sch_netem.ko")).as_deref(),
            Some("sch_netem")
        );
        assert_eq!(
            module_name(Path::new("a/nf-conntrack.ko.zst")).as_deref(),
            Some("nf_conntrack")
        );
        assert_eq!(module_name(Path::new("modules.order")), None);
    }
}
