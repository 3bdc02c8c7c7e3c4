//! `--loss-model gemodel:p,r[,1-h[,1-k]]` (`faults::loss::GilbertElliott`): a model that parses
//! has finite parameters and parses again from Rust's (exact) display of its numbers; one that
//! validates has a mean loss in [0, 1], the loss section the CLI builds from it validates, and
//! that section survives a JSON round trip.
#![no_main]

use chaos_agent::faults::loss::{GilbertElliott, LossArgs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(s) = chaos_agent_fuzz::text(data) else {
        return;
    };
    let ge = match s.parse::<GilbertElliott>() {
        Ok(ge) => ge,
        Err(e) => return chaos_agent_fuzz::assert_one_line(&e.to_string()),
    };
    for v in [ge.p, ge.r, ge.loss_bad, ge.loss_good] {
        assert!(v.is_finite(), "{s:?} -> {ge:?}");
    }
    let shown = format!("gemodel:{},{},{},{}", ge.p, ge.r, ge.loss_bad, ge.loss_good);
    assert_eq!(shown.parse::<GilbertElliott>().ok(), Some(ge), "{shown}");
    let args = LossArgs {
        loss: None,
        loss_model: Some(ge),
    };
    let Some(spec) = args.to_spec() else {
        panic!("--loss-model alone gives no loss section");
    };
    let _ = spec.summary();
    if spec.validate().is_ok() {
        let m = ge.mean_loss();
        assert!((0.0..=1.0 + 1e-12).contains(&m), "mean loss {m} of {ge:?}");
        chaos_agent_fuzz::assert_json_round_trip(&spec, "loss section");
    }
});
