//! Long polling: `getUpdates` in a loop, each update handled before the next offset
//! confirms it to Telegram. An update whose activity could not be published is not
//! confirmed, so it comes again (its event id makes the repeat harmless). Only one
//! process may poll with a token; scale with webhook mode.
//!
//! Reads `telegram.poll_timeout_secs`.

use std::sync::Arc;
use std::time::Duration;

use teloxide::prelude::*;
use teloxide::types::AllowedUpdate;
use teloxide::{ApiError, RequestError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::handler::Handler;

/// The updates the bot asks for: messages, and its own membership (blocked or not).
pub fn allowed_updates() -> Vec<AllowedUpdate> {
    vec![AllowedUpdate::Message, AllowedUpdate::MyChatMember]
}

/// Polls until `shutdown`, then confirms what was handled.
pub async fn run(
    handler: Arc<Handler>,
    timeout_secs: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bot = handler.bot.clone();
    // The next update to ask for; 0 asks for everything unconfirmed.
    let mut offset: i32 = 0;
    let mut failures: u32 = 0;
    'polling: while !shutdown.is_cancelled() {
        let request = bot
            .get_updates()
            .offset(offset)
            .timeout(timeout_secs)
            .allowed_updates(allowed_updates())
            .send();
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            result = request => result,
        };
        let pause = match result {
            Ok(updates) => {
                failures = 0;
                for update in &updates {
                    if let Err(e) = handler.handle(update, None, &shutdown).await {
                        // Stopping: leave this update unconfirmed for the next start.
                        info!(error = %e, "stopping before an update was handled");
                        break 'polling;
                    }
                    offset = update.id.as_offset();
                }
                continue;
            }
            Err(RequestError::RetryAfter(s)) => s.duration(),
            Err(RequestError::Api(ApiError::InvalidToken)) => {
                anyhow::bail!("Telegram refused telegram.token (Unauthorized)");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                match &e {
                    RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => warn!(
                        "another process polls with this token: run one replica in polling \
                         mode, or use telegram.mode = \"webhook\""
                    ),
                    RequestError::Api(ApiError::CantGetUpdates) => {
                        warn!("a webhook is set for this token; removing it to poll");
                        if let Err(e) = bot.delete_webhook().await {
                            warn!(error = %e, "cannot remove the webhook");
                        }
                    }
                    _ => warn!(error = %e, "getUpdates failed; retrying"),
                }
                Duration::from_millis(250 << failures.min(7)).min(Duration::from_secs(30))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if offset != 0 {
        // Confirm the handled updates, or the next start would see them again (and
        // answer their commands twice).
        let confirm = bot.get_updates().offset(offset).limit(1).timeout(0).send();
        match tokio::time::timeout(Duration::from_secs(5), confirm).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot confirm the last updates"),
            Err(_) => warn!("confirming the last updates timed out"),
        }
    }
    Ok(())
}
