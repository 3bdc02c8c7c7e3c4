//! Randomness and the loss decision (Bernoulli or Gilbert-Elliott).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use chaos_common::{F_LOSS_GE, F_SEEDED, FaultSlot};

use crate::{CHAOS_GE, CHAOS_RNG};

/// State used when a CPU's `CHAOS_RNG` slot is 0: xorshift has the all-zero state as a fixed
/// point, so a slot userspace forgot to seed would otherwise return 0 forever (= always drop).
const RNG_FALLBACK: u64 = 0x9E37_79B9_7F4A_7C15;

/// A uniform `u32`: xorshift64* on this CPU's `CHAOS_RNG` entry of the fault slot when
/// `F_SEEDED` is set
/// (reproducible: one chain per CPU, no atomics needed because a tc program runs with migration
/// disabled and per-CPU values are private), else `bpf_get_prandom_u32()`.
#[inline(always)]
pub fn draw(flags: u32, slot: u32) -> u32 {
    if flags & F_SEEDED != 0
        && let Some(state) = CHAOS_RNG.get_ptr_mut(slot)
    {
        // SAFETY: a per-CPU array slot, valid for the duration of the program.
        let mut x = unsafe { *state };
        if x == 0 {
            x = RNG_FALLBACK;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        // SAFETY: as above.
        unsafe { *state = x };
        // xorshift64*: the high bits of the product are the well-mixed ones.
        return (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32;
    }
    // SAFETY: helper available to every program type since 4.1.
    unsafe { bpf_get_prandom_u32() }
}

/// Whether a uniform draw hits a threshold; `u32::MAX` means always (a strict `<` would miss
/// the draw `u32::MAX` once in 2^32).
#[inline(always)]
pub fn hit(draw: u32, threshold: u32) -> bool {
    threshold == u32::MAX || draw < threshold
}

/// Decides whether a matched packet is lost. Only called for matched packets, so unmatched
/// traffic neither costs a draw nor advances the seeded sequence.
#[inline(always)]
pub fn should_drop(cfg: &FaultSlot, flags: u32, slot: u32) -> bool {
    if flags & F_LOSS_GE != 0 {
        // Gilbert-Elliott: a two-state Markov chain per CPU. The transition is drawn first and
        // the loss uses the state the packet lands in (kernel-techniques 2.1).
        let Some(st) = CHAOS_GE.get_ptr_mut(slot) else {
            return false;
        };
        // SAFETY: per-CPU array slot, valid for the duration of the program.
        let was_bad = unsafe { *st } != 0;
        let t = draw(flags, slot);
        let bad = if was_bad {
            !hit(t, cfg.ge_r)
        } else {
            hit(t, cfg.ge_p)
        };
        // SAFETY: as above.
        unsafe { *st = u32::from(bad) };
        let threshold = if bad {
            cfg.ge_loss_bad
        } else {
            cfg.loss_threshold
        };
        threshold != 0 && hit(draw(flags, slot), threshold)
    } else {
        // Certain loss takes no draw (a helper call): `hit` would take any draw.
        let threshold = cfg.loss_threshold;
        threshold == u32::MAX || (threshold != 0 && hit(draw(flags, slot), threshold))
    }
}
