//! The xDS client's lifetime on the control thread: the ADS stream, reconnected with
//! backoff for ever, and the SDS streams its resources ask for.

use std::cell::RefCell;
use std::rc::Rc;

use crate::model::convert::AdsConfig;
use crate::proto::envoy::config::core::v3::Node;

use super::ads::{delta_stream, sotw_stream};
use super::control::Control;
use super::transport::{session, target, Backoff};

/// Runs the ADS client for ever (the process's drain ends it). Needs a `LocalSet`: the
/// ADS and SDS streams share `control` on this thread.
pub async fn run(cfg: AdsConfig, node: Node, control: Rc<RefCell<Control>>) {
    let control = &*control;
    let target = target(&cfg, &control.borrow().statics);
    let (target, timeout) = match target {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("ADS disabled: {e}");
            return;
        }
    };
    let mut backoff = Backoff::new();
    loop {
        let got_response = session("ADS", &target, timeout, control, |channel| async {
            if cfg.delta {
                delta_stream(&cfg, &node, control, channel).await
            } else {
                sotw_stream(&cfg, &node, control, channel).await
            }
        })
        .await;
        if got_response {
            backoff.reset();
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}
