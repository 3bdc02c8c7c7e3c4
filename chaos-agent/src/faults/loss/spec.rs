//! Packet loss: its spec (Bernoulli or Gilbert-Elliott), validation, CLI flags and summary.
//! The loss itself is done by the fault's slot in the eBPF datapath (`faults::packet`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, check_prob, parse_fraction, trim_float};

/// Gilbert-Elliott burst loss: a two-state channel (good/bad).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliott {
    /// Probability of moving from good to bad, per packet.
    pub p: f64,
    /// Probability of moving from bad to good, per packet.
    pub r: f64,
    /// Loss probability in the bad state (`1-h`; default 1).
    #[serde(default = "one")]
    pub loss_bad: f64,
    /// Loss probability in the good state (`1-k`; default 0).
    #[serde(default)]
    pub loss_good: f64,
}

fn one() -> f64 {
    1.0
}

impl GilbertElliott {
    /// Long-run loss rate: `pi_bad * loss_bad + pi_good * loss_good`.
    #[must_use]
    pub fn mean_loss(&self) -> f64 {
        let pi_bad = self.p / (self.p + self.r);
        pi_bad * self.loss_bad + (1.0 - pi_bad) * self.loss_good
    }
}

impl FromStr for GilbertElliott {
    type Err = SpecError;
    /// Parses `gemodel:p,r[,1-h[,1-k]]` (probabilities as fractions or percentages with `%`).
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| SpecError::BadLossModel {
            input: s.to_owned(),
            why: why.to_owned(),
        };
        let body = s
            .strip_prefix("gemodel:")
            .ok_or_else(|| bad("expected gemodel:p,r[,1-h[,1-k]]"))?;
        let nums: Vec<f64> = body
            .split(',')
            .map(parse_fraction)
            .collect::<Option<_>>()
            .ok_or_else(|| bad("not a number"))?;
        if !(2..=4).contains(&nums.len()) {
            return Err(bad("expected 2 to 4 values"));
        }
        Ok(Self {
            p: nums[0],
            r: nums[1],
            loss_bad: nums.get(2).copied().unwrap_or(1.0),
            loss_good: nums.get(3).copied().unwrap_or(0.0),
        })
    }
}

/// Packet loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// Probability that a matching packet is dropped, in (0, 1]. With a Gilbert-Elliott model
    /// this is ignored in favour of the model's own parameters.
    pub probability: f64,
    /// Burst-loss model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<GilbertElliott>,
}

impl LossSpec {
    /// Checks the probabilities.
    pub fn validate(&self) -> Result<(), SpecError> {
        match &self.model {
            None => check_prob("loss probability", self.probability, false),
            Some(ge) => {
                check_prob("gemodel p", ge.p, false)?;
                check_prob("gemodel r", ge.r, false)?;
                check_prob("gemodel 1-h", ge.loss_bad, true)?;
                check_prob("gemodel 1-k", ge.loss_good, true)
            }
        }
    }

    /// The summary's part, e.g. `loss 10%`.
    #[must_use]
    pub fn summary(&self) -> String {
        match &self.model {
            None => format!("loss {}%", trim_float(self.probability * 100.0)),
            Some(ge) => format!(
                "burst loss (GE, mean {}%)",
                trim_float(ge.mean_loss() * 100.0)
            ),
        }
    }
}
