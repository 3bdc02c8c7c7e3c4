//! `chaos-agent doctor`.

use std::process::ExitCode;

use super::DoctorArgs;

pub(super) fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    crate::sys::raise_memlock();
    let checks = crate::doctor::run();
    if args.output.is_json() {
        super::output::print_json(&super::output::Doctor { checks: &checks })?;
    } else {
        println!("{:<8} {:<4} {:<44} DETAIL", "CHECK", "OK", "NEEDED FOR");
        for c in &checks {
            println!(
                "{:<8} {:<4} {:<44} {}",
                c.name,
                if c.ok { "yes" } else { "no" },
                c.needed_for,
                c.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
