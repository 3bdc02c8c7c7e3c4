//! Block devices, for IO limits: a path or `MAJ:MIN` resolved to the whole disk the kernel
//! throttles (blk-throttle keeps its limits per disk; `io.max` refuses a partition).

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// A disk, as the cgroup IO files key it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// `MAJ:MIN` of the disk.
    pub key: String,
    /// Its kernel name (`vdb`).
    pub name: String,
    /// The partition given (`vdb1`), when one was.
    pub partition: Option<String>,
}

/// Why a device cannot be limited.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The path names no block device.
    #[error("{0} is not a block device")]
    NotBlock(String),
    /// The path or number names nothing the kernel knows.
    #[error("{device}: {why}")]
    Unknown {
        /// As given.
        device: String,
        /// What went wrong.
        why: String,
    },
}

/// `/sys/dev/block/MAJ:MIN`, where the kernel describes a device by its numbers.
fn sysfs(key: &str) -> PathBuf {
    Path::new("/sys/dev/block").join(key)
}

/// Resolves `device` (a path to a block device node, or `MAJ:MIN`) to its disk.
pub fn disk_of(device: &str) -> Result<Disk, BlockError> {
    let unknown = |why: String| BlockError::Unknown {
        device: device.to_owned(),
        why,
    };
    let key = if let Some((ma, mi)) = device.split_once(':')
        && ma.parse::<u32>().is_ok()
        && mi.parse::<u32>().is_ok()
    {
        device.to_owned()
    } else {
        let md = std::fs::metadata(device).map_err(|e| unknown(e.to_string()))?;
        if !md.file_type().is_block_device() {
            return Err(BlockError::NotBlock(device.to_owned()));
        }
        let rdev = md.rdev();
        format!("{}:{}", libc::major(rdev), libc::minor(rdev))
    };
    // `/sys/dev/block/MAJ:MIN` links to `.../block/vdb` or `.../block/vdb/vdb1`.
    let dir = std::fs::canonicalize(sysfs(&key))
        .map_err(|_| unknown(format!("the kernel knows no block device {key}")))?;
    let name = |d: &Path| {
        d.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if !dir.join("partition").exists() {
        return Ok(Disk {
            key,
            name: name(&dir),
            partition: None,
        });
    }
    let parent = dir
        .parent()
        .ok_or_else(|| unknown("a partition without a disk".to_owned()))?;
    let disk_key = std::fs::read_to_string(parent.join("dev"))
        .map_err(|e| unknown(format!("the disk of partition {key}: {e}")))?;
    Ok(Disk {
        key: disk_key.trim().to_owned(),
        name: name(parent),
        partition: Some(name(&dir)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_block_device_is_refused() {
        assert!(matches!(disk_of("/dev/null"), Err(BlockError::NotBlock(_))));
        assert!(matches!(
            disk_of("/nonexistent/disk"),
            Err(BlockError::Unknown { .. })
        ));
        // No block device has major 0.
        assert!(matches!(disk_of("0:4095"), Err(BlockError::Unknown { .. })));
    }

    #[test]
    fn a_disk_named_by_number_is_itself() {
        // Any disk of this host (its root disk, or a loop device).
        let disk = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .find_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
            .expect("a disk in /sys/block");
        let d = disk_of(disk.trim()).expect("resolves");
        assert_eq!(d.key, disk.trim());
        assert_eq!(d.partition, None);
    }
}
