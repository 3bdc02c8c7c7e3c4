//! What runs where: the tests that stay on the host ([`HOST_ONLY`]), the binaries that run alone
//! ([`ALONE`]), and the split of the others into [`LANES`] lanes that run side by side.

use std::collections::HashMap;

/// Tests that run on the host only: (test binary, test, why). The guest is there for what its
/// kernel has and the host's lacks (netem, fq, prio, `cls_bpf` without tcx, an older verifier);
/// these check what no kernel difference changes, or measure time, which under TCG would measure
/// the emulator. Every other test of every binary runs in the guest. init.sh passes them to
/// libtest as `--skip`, so they count as filtered out, not as passed.
pub(super) const HOST_ONLY: &[(&str, &str, &str)] = &[
    (
        "daemon",
        "the_chaos_toolkit_runs_a_fault_and_its_rollback",
        "the guest has no python3 for the Chaos Toolkit; the fault and its stop are the daemon suite's",
    ),
    (
        "completions",
        "bash_completion_completes_subcommands_and_flags",
        "shells and man-db judge the scripts and pages; no kernel involved, and the guest has neither",
    ),
    (
        "completions",
        "zsh_completion_completes_subcommands_and_flags",
        "shells and man-db judge the scripts and pages; no kernel involved, and the guest has neither",
    ),
    (
        "completions",
        "fish_completion_completes_subcommands_and_flags",
        "shells and man-db judge the scripts and pages; no kernel involved, and the guest has neither",
    ),
    (
        "completions",
        "man_renders_the_generated_pages",
        "shells and man-db judge the scripts and pages; no kernel involved, and the guest has neither",
    ),
    (
        "container",
        "refuse_in_a_container_fails_its_connects_and_no_one_else_s",
        "the guest has no container runtime; the kernel side is the scope and refuse suites'",
    ),
    (
        "container",
        "reset_in_a_container_aborts_its_connections_only",
        "the guest has no container runtime; the kernel side is the scope and reset suites'",
    ),
    (
        "container",
        "loss_on_a_container_s_own_namespace_acts_on_its_host_side_veth",
        "the guest has no container runtime; the kernel side is the scope suite's fake container",
    ),
    (
        "scope",
        "scope_bad_input_is_refused_with_nothing_applied",
        "path, pid and option validation before any kernel change; the same on both kernels",
    ),
    (
        "reset",
        "protected_ports_and_bad_input_are_never_reset",
        "the protected-port filter and CLI validation are user space, the same on both kernels; reset_aborts runs the kernel side",
    ),
    (
        "refuse",
        "bad_input_is_refused_with_nothing_attached",
        "CLI validation before any kernel change; no kernel involved",
    ),
    (
        "daemon",
        "api_create_list_show_extend_stop",
        "HTTP/JSON semantics over the socket; the loss fault it creates is the loss suite's",
    ),
    (
        "daemon",
        "uid_not_allowed_is_refused",
        "SO_PEERCRED and socket modes do not depend on the kernel version",
    ),
    (
        "daemon",
        "tcp_needs_a_token_and_limits_apply",
        "token checks and limits do not depend on the kernel version",
    ),
    ("daemon", "config_check", "parses TOML; no kernel involved"),
    (
        "own_faults",
        "every_netlink_step_refused_mid_apply_is_rolled_back",
        "LD_PRELOAD needs a dynamically linked agent; the guest's is static musl",
    ),
    (
        "daemon",
        "metrics_pass_promtool_and_prometheus_sees_drops",
        "promtool and Prometheus are not in the guest; the counters are the loss suite's",
    ),
    (
        "prometheus",
        "deploy_rules_pass_promtool_check_and_unit_tests",
        "promtool is not in the guest; the rules are YAML and PromQL, no kernel involved",
    ),
    (
        "prometheus",
        "dashboard_and_alerts_work_on_a_real_prometheus",
        "promtool and Prometheus are not in the guest; the counters behind each panel are the loss, dns, refuse and limit suites'",
    ),
    (
        "prometheus",
        "scrapes_during_busy_api_keep_every_series_and_counters_monotonic",
        "the registry's lock and the scrape path are user space, the same on both kernels",
    ),
    (
        "daemon",
        "parallel_clients_leave_nothing",
        "a load test: under TCG it would measure the emulator",
    ),
    (
        "daemon",
        "ttl_reverts_are_on_time",
        "a timing test: under TCG it would measure the emulator",
    ),
    (
        "daemon",
        "ttl_ends_are_on_time_at_the_receiver",
        "a timing test: under TCG it would measure the emulator",
    ),
    (
        "daemon",
        "sigterm_reverts_everything_within_5s",
        "a timing test; SIGTERM reverts on 6.1 are proven by the loss and netem suites",
    ),
    (
        "ebpf_datapath",
        "tcx_drop_pass_through_and_ttl",
        "attaches with tcx, which 6.1 lacks; the loss suite covers its netlink path",
    ),
    (
        "ebpf_datapath",
        "egress_wire_drop_is_real_loss_for_tcp",
        "attaches with tcx, which 6.1 lacks; the loss suite covers its netlink path",
    ),
    (
        "dns",
        "nxdomain_for_matching_names_and_types_only",
        "the path of servfail (which runs in the guest) with another rcode constant",
    ),
    (
        "dns",
        "refused_for_matching_names_and_types_only",
        "the path of servfail (which runs in the guest) with another rcode constant",
    ),
    (
        "dns",
        "dns_types_select_srv_and_txt_only",
        "the type table is one hash lookup, the same on both kernels; servfail in the guest filters by type too",
    ),
    (
        "dns",
        "rate_fails_a_binomial_fraction_of_answers",
        "the same random draw on both kernels; 400 digs would take minutes under TCG",
    ),
    (
        "dns",
        "flapping_dns_follows_the_schedule",
        "a timing test: under TCG it would measure the emulator; sigkill_mid_flap proves flapping on 6.1",
    ),
    (
        "dns",
        "flapping_loss_follows_the_schedule",
        "a timing test: under TCG it would measure the emulator; sigkill_mid_flap proves flapping on 6.1",
    ),
    (
        "dns",
        "without_a_fault_every_client_gets_the_zone",
        "the baseline of the harness (dnsmasq, dig, getent); no fault, no kernel feature",
    ),
    (
        "dns",
        "bad_input_is_refused_with_nothing_applied",
        "CLI validation before any kernel change; no kernel involved",
    ),
    (
        "bad_input",
        "cli_foreground_refuses_bad_input_with_one_line_and_applies_nothing",
        "argument parsing and validation before any kernel change; no kernel involved",
    ),
    (
        "bad_input",
        "client_and_api_refuse_bad_input_and_apply_nothing",
        "HTTP/JSON and spec validation before any kernel change; no kernel involved",
    ),
    (
        "bad_input",
        "config_files_are_refused_with_one_line_and_start_nothing",
        "parses TOML; no kernel involved",
    ),
    (
        "cli",
        "colour_only_on_a_terminal_and_never_with_no_color",
        "isatty and NO_COLOR are user space; the guest's busybox has no util-linux `script` for a terminal",
    ),
    (
        "cli",
        "global_options_have_their_own_heading_in_every_help",
        "clap's help text; no kernel involved",
    ),
    (
        "cli",
        "exit_codes_without_an_agent",
        "argument parsing and a socket nobody listens on; the guest has sch_netem, so its kernel part would skip",
    ),
    (
        "image",
        "the_image_loads_with_its_labels_entrypoint_and_one_layer",
        "the guest has no container runtime (podman) and no image archive; the image is the same for every kernel",
    ),
    (
        "image",
        "ctr_imports_the_archive_and_runs_the_agent_from_it",
        "the guest has no container runtime (containerd); the image is the same for every kernel",
    ),
    (
        "image",
        "the_agent_runs_from_the_image_version_and_doctor",
        "the guest has no container runtime; doctor on 6.1 is the kernel_features suite's",
    ),
    (
        "image",
        "the_daemon_from_the_image_answers_the_daemonset_s_probes_and_a_wedged_one_does_not",
        "the guest has no container runtime; the daemon on 6.1 is the daemon suite's",
    ),
    (
        "image",
        "one_fault_from_the_image_drops_at_the_receiver_and_leaves_nothing",
        "the guest has no container runtime; loss on 6.1 is the loss suite's",
    ),
    (
        "image",
        "the_manifests_pass_the_kubernetes_and_monitoring_schemas",
        "the guest has no kubectl, Python or Node.js; no kernel involved",
    ),
    (
        "image",
        "the_manifests_fit_together_and_the_config_is_the_agent_s",
        "the guest has no kubectl or Python; no kernel involved",
    ),
];

/// Guest seconds of each test binary in a calm run (every run prints the per-test times), used
/// to split the binaries into [`LANES`] lanes of about equal length. Unlisted: 10 s.
const GUEST_SECONDS: &[(&str, u32)] = &[
    ("dns", 101),
    ("loss", 99),
    ("netem", 88),
    ("daemon", 64),
    ("tc_netlink", 25),
    ("refuse", 40),
    ("reset", 30),
    ("scope", 30),
    ("limit", 60),
    ("stress", 40),
    ("experiment", 55),
    ("cli", 30),
    ("own_faults", 20),
    ("ebpf_logic", 16),
    ("bad_input", 6),
    ("kernel_features", 6),
    ("sock_diag", 5),
    ("lib-chaos_agent", 5),
    ("ebpf_datapath", 0),
    // Every test of it is host-only (above).
    ("prometheus", 0),
    ("bin-chaos-agent", 0),
    ("image", 0),
    ("completions", 0),
];

/// Test binaries run at once in the guest, one per vCPU (QEMU's TCG runs each vCPU on its own
/// host thread): most of a network test is waiting (TTLs, timeouts), which the other lane fills.
pub(super) const LANES: usize = 2;

/// Binaries that run alone, after the lanes: they assert times to the millisecond (netem's
/// delay within +/- 2 ms at the median, jitter within 20 %), and under TCG a busy second vCPU
/// makes the guest's timers late: a 100 ms delay measured 104 ms with the loss suite running
/// beside it.
pub(super) const ALONE: &[&str] = &["netem"];

/// Splits the binaries into `lanes` lanes, longest first onto the shortest lane. Within a lane
/// the binaries keep their order (unit tests first).
pub(super) fn lanes<'a>(bins: &[&'a str], lanes: usize) -> Vec<Vec<&'a str>> {
    let cost = |b: &str| {
        GUEST_SECONDS
            .iter()
            .find(|(n, _)| *n == b)
            .map_or(10, |(_, s)| *s)
    };
    let mut by_cost: Vec<&str> = bins.to_vec();
    by_cost.sort_by_key(|b| std::cmp::Reverse(cost(b)));
    let mut load = vec![0u32; lanes.max(1)];
    let mut lane_of = HashMap::new();
    for b in by_cost {
        let (i, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .expect("at least one lane");
        load[i] += cost(b);
        lane_of.insert(b, i);
    }
    let mut out = vec![Vec::new(); load.len()];
    for b in bins {
        out[lane_of[b]].push(*b);
    }
    out.retain(|l| !l.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace_root;

    #[test]
    fn lanes_balance_by_cost_and_keep_order() {
        let bins = [
            "lib-chaos_agent",
            "daemon",
            "kernel_features",
            "loss",
            "netem",
            "tc_netlink",
        ];
        let l = lanes(&bins, 2);
        assert_eq!(l.len(), 2);
        let mut all: Vec<&str> = l.concat();
        all.sort_unstable();
        let mut want = bins.to_vec();
        want.sort_unstable();
        assert_eq!(all, want, "every binary in exactly one lane");
        let lane_of = |b: &str| l.iter().position(|lane| lane.contains(&b)).unwrap();
        assert_ne!(lane_of("netem"), lane_of("loss"), "the two longest apart");
        assert_eq!(lanes(&bins, 1), [bins.to_vec()]);
        assert!(lanes(&[], 2).is_empty());
    }

    #[test]
    fn host_only_names_existing_tests() {
        let root = workspace_root();
        for (bin, test, why) in HOST_ONLY {
            let path = root.join(format!("chaos-agent/tests/{bin}.rs"));
            let src = std::fs::read_to_string(&path).expect("test source");
            assert!(
                src.contains(&format!("fn {test}()")),
                "HOST_ONLY names {bin}::{test}, which {} does not define",
                path.display()
            );
            assert!(!why.is_empty(), "{bin}::{test}: say why it is host-only");
        }
    }
}
