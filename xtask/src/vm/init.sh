#!/bin/sh
# /init of the `cargo xtask vm-test` guest (busybox sh). It prepares what the privileged suite
# expects of a host, runs every test binary once, prints ONE verdict line and powers off.
# Lines starting with VM- are read by xtask/src/vm/console.rs: keep their format.

export PATH=/usr/bin:/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel gave us /dev/console as stdin; nothing here should wait on the console.
exec </dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
# Unless the workspace's sources are there (a checkout under /tmp): the root is writable anyway.
[ -z "$(ls -A /tmp)" ] && mount -t tmpfs tmpfs /tmp
# `ip netns add` bind-mounts namespaces here; tools look in /var/run too.
mkdir -p /run/netns
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
# Not needed by the suite, but makes bpf_printk readable when debugging a failure by hand.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo
echo "VM-INIT kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s"

ip link set lo up

# Modules, dependencies first (the host resolved the order). 6.1 requests qdisc modules by name
# through /sbin/modprobe, which has no modules.dep here, so everything is loaded up front.
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod.ko" || echo "VM-MODULE-FAIL $mod"
done </etc/vm/modules

# The cgroup v2 tests need the controllers delegated to child groups of the root.
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done

export CHAOS_AGENT_BIN=/bin/chaos-agent
export CHAOS_VM=1
# What this kernel must have and lack (chaos-testing's PROFILES): a test whose feature is in the
# profile fails instead of skipping.
export CHAOS_REQUIRE=vm
export RUST_BACKTRACE=1
# Lets the stable-built libtest accept --report-time: per-test durations under TCG are what keeps
# the VM suite inside its 10-minute budget, so every run shows them. (No test target may set
# `harness = false`, or it would get these flags too.)
export RUSTC_BOOTSTRAP=1
# libtest's arguments, the same for every binary.
set -- --test-threads=1 -Zunstable-options --report-time
FILTER=$(cat /etc/vm/filter)
[ -n "$FILTER" ] && set -- "$@" "$FILTER"
# Like cargo test: in the package's directory, where relative fixture paths resolve.
export CARGO_MANIFEST_DIR="$(cat /etc/vm/pkgdir)"
cd "$CARGO_MANIFEST_DIR" 2>/dev/null || cd /tmp

# One lane: the binaries listed in /etc/vm/laneN, one after the other. The host split them into
# lanes of about equal length (xtask/src/vm/lanes.rs), one per vCPU, and runs the lanes at once: most
# of a network test is waiting (TTLs, timeouts), which the other lane fills. /etc/vm/alone runs
# after them, by itself. Every output
# line of a binary carries its name ("loss| test ... ok"), whole: sed writes line by line, so
# two lanes never mix inside a line. Lines starting with VM- are read by the host.
# Kills every process but this shell whose stdout or stderr is this shell's stdout (the pipe to
# sed), printing "VM-LEAK BINARY PID CMDLINE" to fd 3, and fails the binary: a test must not
# leave processes behind. `read` is a builtin, so /proc/self is this (sub)shell.
reap_leftovers() {
    read -r me _ </proc/self/stat
    pipe=$(readlink "/proc/$me/fd/1")
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = "$me" ] && continue
        for fd in 1 2; do
            if [ "$(readlink "$d/fd/$fd" 2>/dev/null)" = "$pipe" ]; then
                echo "VM-LEAK $1 $p $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)" >&3
                kill -9 "$p" 2>/dev/null
                [ "$(cat "/tmp/vm-rc.$1")" = 0 ] && echo 97 >"/tmp/vm-rc.$1"
                break
            fi
        done
    done
}

run_lane() {
    lane=$1
    shift
    exec 3>&1
    while read -r t; do
        [ -n "$t" ] || continue
        echo "VM-TEST-BIN $t"
        # Host-only tests (HOST_ONLY in xtask/src/vm/lanes.rs), one name a line, become --skip NAME.
        skips=$(sed 's/^/--skip /' "/etc/vm/skip/$t" 2>/dev/null)
        # </dev/null: the loop's stdin is the list; a test must not eat it. The exit code goes
        # through a file: a pipeline's status is sed's. Each skipped test appends
        # "skip binary::test: why" to CHAOS_SKIP_LOG (chaos_testing::skip; "part ..." for a
        # part of a test); they are printed as VM-SKIP lines, which the host takes off the passes.
        : >"/tmp/vm-skip.$t"
        # shellcheck disable=SC2086 # $skips splits into words on purpose (names have no spaces).
        # After the binary, reap_leftovers kills what it left holding this pipe (else sed
        # would wait for them: a stray `sleep 600` once held the whole guest to its timeout).
        # fd 3 is the lane's own output, for the VM-LEAK lines; the binary does not get it.
        { CHAOS_SKIP_LOG="/tmp/vm-skip.$t" "/tests/$t" "$@" $skips </dev/null 2>&1 3>&-; echo $? >"/tmp/vm-rc.$t"; reap_leftovers "$t"; } | sed "s/^/$t| /"
        sed 's/^/VM-SKIP /' "/tmp/vm-skip.$t"
        rc=$(cat "/tmp/vm-rc.$t")
        if [ "$rc" -eq 0 ]; then
            echo "$t" >>/tmp/vm-pass
        else
            echo "$t" >>/tmp/vm-fail
            echo "VM-TEST-BIN-FAIL $t rc=$rc"
        fi
        echo "VM-TEST-BIN-END $t"
    done <"$lane"
}

: >/tmp/vm-pass
: >/tmp/vm-fail
for lane in /etc/vm/lane*; do
    run_lane "$lane" "$@" &
done
wait
# Then the binaries that measure time to the millisecond, with the machine to themselves
# (ALONE in xtask/src/vm/lanes.rs). With `vm-test --repeat N` every binary is there, and the
# round runs N times: the host counts each test's failures (its flake rate).
round=1
rounds=$(cat /etc/vm/repeat 2>/dev/null || echo 1)
while [ "$round" -le "$rounds" ]; do
    [ "$rounds" -gt 1 ] && echo "VM-ROUND $round of $rounds"
    run_lane /etc/vm/alone "$@"
    round=$((round + 1))
done
pass=$(wc -l </tmp/vm-pass)
fail=$(wc -l </tmp/vm-fail)

echo "VM-VERDICT pass=$pass fail=$fail"
sync
poweroff -f
# poweroff -f does not return; if it ever did, exiting /init panics, which ends QEMU too
# (-no-reboot, panic=-1) and the host still has the verdict.
sleep 10
