//! The loss fault's command-line flags (flattened into `chaos-agent inject`).

use super::{GilbertElliott, LossSpec};

/// Loss flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Loss")]
pub struct LossArgs {
    /// Drop matching packets with this probability, in (0, 1] (`0.1` or `10%`).
    #[arg(long, value_parser = crate::spec::parse_probability_arg)]
    pub loss: Option<f64>,
    /// Burst loss instead of independent drops: `gemodel:p,r[,1-h[,1-k]]` (Gilbert-Elliott).
    #[arg(long, value_name = "MODEL")]
    pub loss_model: Option<GilbertElliott>,
}

impl LossArgs {
    /// The spec section the flags ask for, if any.
    #[must_use]
    pub fn to_spec(&self) -> Option<LossSpec> {
        match (self.loss, self.loss_model) {
            (Some(p), model) => Some(LossSpec {
                probability: p,
                model,
            }),
            (None, Some(model)) => Some(LossSpec {
                probability: model.mean_loss(),
                model: Some(model),
            }),
            (None, None) => None,
        }
    }
}
