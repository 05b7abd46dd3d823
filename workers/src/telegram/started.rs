//! Who has started the bot, in a NATS key-value bucket `<PREFIX>_TELEGRAM_STARTED`
//! (key: the Telegram user id, value: when, in Unix ms). Telegram lets a bot write
//! privately only to users who started it; every replica sees the same bucket and the
//! bot needs no database. Created on start-up if missing.

use async_nats::jetstream::{self, kv};

use teloxide::types::UserId;
use ttfd_shared::wire::Subjects;

/// A failure of the key-value store (NATS unavailable, ...): transient.
#[derive(Debug, thiserror::Error)]
#[error("started-users bucket: {0}")]
pub struct StartedError(String);

fn err(e: impl std::fmt::Display) -> StartedError {
    StartedError(e.to_string())
}

#[derive(Clone)]
pub struct StartedUsers {
    kv: kv::Store,
}

/// The bucket's name for an installation prefix.
pub fn bucket_name(subjects: &Subjects) -> String {
    subjects.stream("TELEGRAM_STARTED")
}

impl StartedUsers {
    /// Opens the bucket, creating it on first use.
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Self, StartedError> {
        let bucket = bucket_name(subjects);
        // The bucket's stream is created here with the key-value conventions rather
        // than with `create_key_value`, which first reads the account's limits in a
        // shape NATS 2.9 servers do not send.
        let stream = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Telegram users who started the bot (ttfd telegram)".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::File,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        };
        js.get_or_create_stream(stream).await.map_err(err)?;
        let kv = js.get_key_value(bucket.as_str()).await.map_err(err)?;
        Ok(Self { kv })
    }

    pub async fn remember(&self, user: UserId, now_ms: i64) -> Result<(), StartedError> {
        self.kv
            .put(user.0.to_string(), now_ms.to_string().into())
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// The user blocked the bot: private messages would fail.
    pub async fn forget(&self, user: UserId) -> Result<(), StartedError> {
        self.kv.delete(user.0.to_string()).await.map_err(err)
    }

    pub async fn contains(&self, user: UserId) -> Result<bool, StartedError> {
        Ok(self
            .kv
            .get(user.0.to_string())
            .await
            .map_err(err)?
            .is_some())
    }
}
