#!/bin/bash
# The test of `cargo xtask vm-systemd`, run at boot by chaos-vm-test.service in a Debian 12
# userland with systemd as PID 1. It installs the package and judges the unit with systemd's,
# dpkg's, tc's, bpftool's and the cgroup files' own answers, never the agent's.
# Lines starting with VMSD- (and VM-INIT, VM-VERDICT) are read by xtask/src/vm/systemd.rs.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec </dev/null

echo "VM-INIT kernel $(uname -r), systemd $(systemctl --version | head -1 | cut -d' ' -f2), up $(cut -d' ' -f1 /proc/uptime) s"

pass=0
fail=0
ok() { echo "VMSD-PASS $1"; pass=$((pass + 1)); }
bad() { echo "VMSD-FAIL $1: $2"; fail=$((fail + 1)); }
# check NAME CMD...: passes if CMD succeeds; its output is shown on failure.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$* -> $(echo "$out" | tail -5 | tr '\n' '|')"; fi
}
# wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds or the deadline passes.
wait_for() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}
step() { echo "VMSD-STEP $* (at $(cut -d' ' -f1 /proc/uptime) s)"; }

IF=vsd0
IF2=vsd1
VICTIM=chaos-victim.service
CG=/sys/fs/cgroup/system.slice/$VICTIM
# filters DEV ingress|egress: the filters tc lists there. Where no clsact was ever added, 6.1's
# tc prints an error and no JSON, or empty objects, depending on the modules loaded: both are
# "no filter" ([]); any real filter is a non-empty object.
filters() {
    local f
    f=$(tc -j filter show dev "$1" "$2" 2>/dev/null | jq -c 'map(select(length > 0))' 2>/dev/null)
    echo "${f:-[]}"
}
# The agent's IFBs by name (ifb0 and ifb1 are the ones the ifb module makes when it is loaded).
# Before the module is loaded `ip link show type ifb` prints nothing: none either.
agent_ifbs() {
    local l
    l=$(ip -j link show type ifb 2>/dev/null | jq -c '[.[].ifname | select(test("^ifb[0-9]+$") | not)]' 2>/dev/null)
    echo "${l:-[]}"
}
# What the host looks like where faults go: the veth's qdiscs and filters, the victim's
# cpu.max, the journal files in the state dir; `tc -j` output compared verbatim.
host_state() {
    tc -j qdisc show dev "$IF"
    filters "$IF" ingress
    filters "$IF" egress
    tc -j qdisc show dev "$IF2"
    filters "$IF2" ingress
    agent_ifbs
    cat "$CG/cpu.max"
    find /var/lib/chaos-agent -type f -not -path '*/experiments/*' 2>/dev/null | sort
}
# The programs the kernel has loaded (`bpftool -j`), by name: compared only while no agent
# runs, since a running agent holds its verified datapath and systemd's device filter of
# DevicePolicy=closed.
programs() { bpftool -j prog show | jq -c '[.[] | .name // empty] | sort'; }
snapshot() { host_state; programs; }
same_as_before() {
    local now
    now=$(snapshot)
    [ "$now" = "$BEFORE" ] || { diff <(echo "$BEFORE") <(echo "$now"); return 1; }
}
# The same, for the host while an agent runs: nothing of a fault left, programs aside.
host_as_before() {
    local now
    now=$(host_state)
    [ "$now" = "$HOST_BEFORE" ] || { diff <(echo "$HOST_BEFORE") <(echo "$now"); return 1; }
}
has_chaos_filter() { tc -j filter show dev "$IF" egress | jq -e 'map(select(.kind == "bpf")) | length > 0'; }
limited() { [ "$(cat "$CG/cpu.max")" != "$CPU_BEFORE" ]; }
agent_pid() { systemctl show -P MainPID chaos-agent.service; }
up() {
    [ "$(systemctl is-active chaos-agent.service)" = active ] && [ -S /run/chaos-agent/agent.sock ] &&
        curl -sf http://127.0.0.1:9464/metrics | grep -q '^chaos_'
}
# Three mechanisms: an eBPF loss fault (a cls_bpf filter on 6.1), netem delay both ways (an IFB
# and a mirred redirect for ingress: sch_netem, ifb and act_mirred are loaded by the kernel's
# own module requests, past the unit's ProtectKernelModules=), a cgroup limit.
inject() {
    chaos-agent inject --iface "$IF" --loss 0.5 --ttl 10m >/tmp/id.loss &&
        chaos-agent inject --iface "$IF2" --delay 20ms --direction both --ttl 10m >/tmp/id.delay &&
        chaos-agent inject --unit chaos-victim --cpu-limit 0.5 --ttl 10m >/tmp/id.limit
}
has_netem() {
    tc -j qdisc show dev "$IF2" | jq -e 'map(select(.kind == "netem")) | length > 0' &&
        [ "$(agent_ifbs)" != "[]" ]
}

step "the fault targets"
ip link add "$IF" type veth peer name vsd1 && ip addr add 10.99.0.1/24 dev "$IF" &&
    ip link set "$IF" up && ip link set vsd1 up || bad setup "veth $IF"
# A CPU weight makes systemd enable the cpu controller for the slice (accounting alone does
# not on cgroup v2, where cpu.stat needs no controller), so the unit's cgroup has cpu.max.
systemd-run --quiet --unit "$VICTIM" -p CPUWeight=100 sleep infinity || bad setup "$VICTIM"
wait_for 20 test -e "$CG/cpu.max" || bad setup "no $CG/cpu.max"
BEFORE=$(snapshot)
HOST_BEFORE=$(host_state)
CPU_BEFORE=$(cat "$CG/cpu.max")

step "install"
check dpkg-i dpkg -i /root/chaos-agent.deb
check installed-not-enabled test "$(systemctl is-enabled chaos-agent.service)" = disabled
check installed-not-started test "$(systemctl is-active chaos-agent.service)" = inactive
check conffile sh -c 'dpkg-query -W -f="\${Conffiles}" chaos-agent | grep -q "/etc/chaos-agent/config.toml"'
for f in /usr/bin/chaos-agent /usr/lib/systemd/system/chaos-agent.service \
    /usr/share/man/man1/chaos-agent-inject.1.gz /usr/share/bash-completion/completions/chaos-agent \
    /usr/share/zsh/vendor-completions/_chaos-agent /usr/share/fish/vendor_completions.d/chaos-agent.fish \
    /usr/share/doc/chaos-agent/copyright; do
    check "dpkg-L:$f" sh -c "dpkg -L chaos-agent | grep -qx '$f'"
done
check man-renders sh -c 'MANWIDTH=80 man chaos-agent-inject 2>&1 | grep -q -- "--direction"'
check bash-completion bash -c 'source /usr/share/bash-completion/completions/chaos-agent &&
    fn=$(complete -p chaos-agent | sed -nE "s/.* -F ([^ ]+) .*/\1/p") &&
    COMP_WORDS=(chaos-agent inject --dire) COMP_CWORD=2 && "$fn" chaos-agent --dire inject &&
    [[ " ${COMPREPLY[*]} " == *" --direction "* ]]'

step "systemctl start"
check start systemctl start chaos-agent.service
check socket-and-metrics wait_for 60 up

step "faults through the CLI"
check inject inject
check fault-in-tc wait_for 10 has_chaos_filter
check fault-in-cgroup limited
check fault-netem-and-ifb has_netem
check programs-loaded sh -c 'bpftool -j prog show | jq -e "map(select(.name // \"\" | startswith(\"chaos\"))) | length > 0"'

step "systemctl stop reverts"
check stop systemctl stop chaos-agent.service
check stop-reverted same_as_before

step "SIGKILL, then ExecStopPost"
# Restart=no for this part only (a runtime drop-in), so that what is judged is ExecStopPost's
# work alone, not a restarted agent's reconcile.
mkdir -p /run/systemd/system/chaos-agent.service.d
printf '[Service]\nRestart=no\n' >/run/systemd/system/chaos-agent.service.d/norestart.conf
systemctl daemon-reload
check start-2 systemctl start chaos-agent.service
check up-2 wait_for 60 up
check inject-2 inject
check fault-2 wait_for 10 has_chaos_filter
check kill systemctl kill -s KILL chaos-agent.service
check dead-by-kill wait_for 30 sh -c '[ "$(systemctl show -P ActiveState chaos-agent.service)" = failed ]'
check killed-by-signal test "$(systemctl show -P Result chaos-agent.service)" = signal
check exec-stop-post-ran sh -c '[ "$(systemctl show -P ExecStopPost chaos-agent.service | grep -o "status=[0-9]*")" = status=0 ]'
check kill-cleaned same_as_before
rm /run/systemd/system/chaos-agent.service.d/norestart.conf
systemctl daemon-reload
systemctl reset-failed chaos-agent.service

step "Restart=on-failure"
check start-3 systemctl start chaos-agent.service
check up-3 wait_for 60 up
check inject-3 inject
check fault-3 wait_for 10 has_chaos_filter
old=$(agent_pid)
# SIGABRT: an unclean death, which on-failure restarts (as it does a SIGKILL or a crash).
check abort systemctl kill -s ABRT --kill-who=main chaos-agent.service
check restarted wait_for 60 sh -c "p=\$(systemctl show -P MainPID chaos-agent.service); [ \"\$p\" != 0 ] && [ \"\$p\" != $old ]"
check restart-counted test "$(systemctl show -P NRestarts chaos-agent.service)" -ge 1
check up-after-restart wait_for 60 up
# Reconciled: the host is as before (ExecStopPost and the new agent's start-up reconcile), the
# new agent holds no fault and takes new ones.
check restart-reconciled host_as_before
check restart-serves sh -c 'chaos-agent list --json | jq -e "(.faults // .) | length == 0"'
check inject-after-restart inject
check fault-after-restart wait_for 10 has_chaos_filter

step "journald"
check journal-json sh -c 'journalctl -u chaos-agent.service -o json --no-pager |
    jq -e -s "map(select(._SYSTEMD_UNIT == \"chaos-agent.service\" and ._COMM == \"chaos-agent\") | .MESSAGE | fromjson? | select(.level and .message)) | length > 0"'
check journal-fields sh -c 'journalctl -u chaos-agent.service -o json --no-pager |
    jq -e -s "map(.MESSAGE | fromjson? | select(.event == \"reconcile\" or .event == \"preload\")) | length > 0"'

step "systemd-analyze security"
exposure=$(systemd-analyze security --no-pager chaos-agent.service 2>/dev/null | sed -n 's/.*Overall exposure level for chaos-agent.service: \([0-9.]*\).*/\1/p')
echo "VMSD-EXPOSURE ${exposure:-none}"
check exposure-below-5.5 awk -v e="${exposure:-99}" 'BEGIN { exit !(e < 5.5) }'

step "apt-get remove with faults active"
# prerm stops the unit (its ExecStopPost reverts); the configuration stays until purge.
check remove env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q chaos-agent
check remove-reverted same_as_before
check remove-not-running sh -c '! pgrep -x chaos-agent'
check remove-keeps-conffile test -f /etc/chaos-agent/config.toml
check remove-state sh -c '[ "$(dpkg-query -W -f="\${db:Status-Status}" chaos-agent)" = config-files ]'

step "a foreground fault killed, then apt-get purge"
# Reinstalled, not started: a foreground `inject` (no socket, so it applies the fault itself)
# is SIGKILLed, leaving a cls_bpf filter and its journal that no unit stop will revert (the unit
# is not running). Only prerm's `chaos-agent cleanup` can: that is what purge must do.
check reinstall dpkg -i /root/chaos-agent.deb
chaos-agent inject --iface "$IF" --loss 0.5 --ttl 10m >/tmp/fg.out 2>&1 &
fg=$!
check foreground-fault wait_for 60 has_chaos_filter
kill -9 "$fg"
wait "$fg" 2>/dev/null
check foreground-leftover has_chaos_filter
check purge env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q chaos-agent
check purge-reverted same_as_before
check purge-not-running sh -c '! pgrep -x chaos-agent'
for p in /var/lib/chaos-agent /etc/chaos-agent /run/chaos-agent /usr/bin/chaos-agent \
    /usr/lib/systemd/system/chaos-agent.service /usr/share/doc/chaos-agent; do
    check "purged:$p" test ! -e "$p"
done
check purged-dpkg sh -c '! dpkg-query -W chaos-agent 2>/dev/null | grep -q .'
check purged-unit sh -c '[ "$(systemctl show -P LoadState chaos-agent.service)" = not-found ]'

step "done"
echo "VM-VERDICT pass=$pass fail=$fail"
sync
systemctl poweroff --force --force
