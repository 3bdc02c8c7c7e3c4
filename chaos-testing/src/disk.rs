//! A block device a test may throttle and write over: in the VM the blank virtio scratch disk
//! QEMU attaches (`/dev/vda`), on the host a loop device over a sparse file, detached on drop.

use std::path::PathBuf;
use std::process::Command;

use crate::{in_vm, unique_name};

/// The scratch disk of the VM guest (xtask's QEMU command line attaches it).
pub const VM_SCRATCH_DISK: &str = "/dev/vda";

/// A disk the test owns.
#[derive(Debug)]
pub struct TestDisk {
    /// Its device node (`/dev/vda`, `/dev/loop3`).
    pub dev: String,
    /// Its `MAJ:MIN`, as the cgroup IO files key it (read from sysfs).
    pub key: String,
    /// The loop device's backing file, on the host.
    backing: Option<PathBuf>,
}

impl TestDisk {
    /// The VM's scratch disk, or a new 256 MiB loop device.
    #[must_use]
    pub fn new() -> Self {
        let (dev, backing) = if in_vm() {
            (VM_SCRATCH_DISK.to_owned(), None)
        } else {
            let file = std::env::temp_dir().join(unique_name("chdisk"));
            std::fs::File::create(&file)
                .and_then(|f| f.set_len(256 << 20))
                .unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
            let out = crate::run(
                "losetup",
                ["--find", "--show", file.to_str().expect("utf-8")],
            );
            (
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                Some(file),
            )
        };
        let name = dev.trim_start_matches("/dev/");
        let key = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .unwrap_or_else(|e| panic!("/sys/class/block/{name}/dev: {e}"))
            .trim()
            .to_owned();
        Self { dev, key, backing }
    }
}

impl Default for TestDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDisk {
    fn drop(&mut self) {
        if let Some(file) = &self.backing {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
            let _ = std::fs::remove_file(file);
        }
    }
}
