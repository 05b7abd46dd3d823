//! NATS JetStream: connecting, provisioning the streams and the shared consumer declared
//! in `nats/`, and publishing events with their id as `Nats-Msg-Id`.
//!
//! Reads `nats.url` and `nats.prefix`.

pub mod history;
pub mod notices;
pub mod publish;
pub mod trust;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer::PullConsumer, context::PublishAckFuture};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use publish::{Pending, SecondCopies, SecondCopy};
use secrecy::ExposeSecret;
use ttfd_shared::wire::{self, Event, Subjects};

use self::trust::Trust;
use crate::settings::NatsSettings;

/// The stream and consumer definitions, written for prefix `ttfd`.
const STREAMS: [(&str, &str); 3] = [
    (
        "events.stream.json",
        include_str!("../../../nats/events.stream.json"),
    ),
    (
        "notify.stream.json",
        include_str!("../../../nats/notify.stream.json"),
    ),
    (
        "dlq.stream.json",
        include_str!("../../../nats/dlq.stream.json"),
    ),
];
const SYNC_CONSUMER: &str = include_str!("../../../nats/sync.consumer.json");

/// Header carrying the reason of a dead-lettered event.
pub const ERROR_HEADER: &str = "Ttfd-Error";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("NATS did not answer within {0:?} at {1}")]
    ConnectTimeout(Duration, String),
    #[error("bad stream or consumer definition in nats/{file}: {source}")]
    Definition {
        file: &'static str,
        source: serde_json::Error,
    },
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("not stored before giving up; last error: {0}")]
    NotStored(String),
}

fn js_err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::JetStream(e.to_string())
}

/// How long a stopping role waits to flush what it sends to NATS.
pub const EXIT_FLUSH: Duration = Duration::from_secs(5);

/// A connection to NATS with JetStream and the installation's subject names.
#[derive(Clone)]
pub struct Broker {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// Copies of each stream that [`Broker::setup`] asks for (`nats.stream_replicas`).
    pub stream_replicas: usize,
    /// What this process signs and how the sync consumer judges (`trust.*`).
    pub trust: Arc<Trust>,
    /// Set when an event JetStream called a duplicate is sent once more after the
    /// window ([`publish`]).
    second_copies: Option<Arc<SecondCopies>>,
}

impl Broker {
    /// Connects once, giving up after `timeout` with a one-line error.
    pub async fn connect(settings: &NatsSettings, timeout: Duration) -> Result<Self, BrokerError> {
        let url = settings.url.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name("ttfd")
            .custom_inbox_prefix(settings.inbox_prefix())
            .connection_timeout(timeout);
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.expose_secret().into());
        }
        let connect = options.connect(url.as_str());
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| BrokerError::ConnectTimeout(timeout, url.clone()))?
            .map_err(|source| BrokerError::Connect { url, source })?;
        Ok(Self {
            stream_replicas: settings.stream_replicas,
            ..Self::from_client(client, &settings.prefix)
        })
    }

    /// Sends what the client still buffers, giving up after `limit` (NATS may be
    /// down while the process stops: shutdown must not wait for it).
    pub async fn flush_within(&self, limit: Duration) {
        match tokio::time::timeout(limit, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing NATS at exit"),
            Err(_) => tracing::warn!(?limit, "NATS unreachable at exit; not flushed"),
        }
    }

    pub fn from_client(client: async_nats::Client, prefix: &str) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            js,
            subjects: Subjects::new(prefix),
            stream_replicas: 1,
            trust: Arc::default(),
            second_copies: None,
        }
    }

    /// The same connection, sending an event that JetStream called a duplicate once
    /// more after the duplicate window, so that another publisher's claim of its id
    /// cannot keep it out ([`publish`]). For the long-running roles.
    pub fn sending_second_copies(self) -> Self {
        Self {
            second_copies: Some(Arc::default()),
            ..self
        }
    }

    /// The second copies waiting in this process, when it sends them.
    pub fn second_copies(&self) -> Option<&SecondCopies> {
        self.second_copies.as_deref()
    }

    /// The same connection, signing and judging by `trust`.
    pub fn with_trust(self, trust: Trust) -> Self {
        Self {
            trust: Arc::new(trust),
            ..self
        }
    }

    /// Creates or updates the streams and the shared sync consumer (idempotent).
    pub async fn setup(&self) -> Result<Vec<String>, BrokerError> {
        let mut done = Vec::new();
        for (file, text) in STREAMS {
            let mut config: jetstream::stream::Config =
                serde_json::from_value(self.rewrite(text, file)?)
                    .map_err(|source| BrokerError::Definition { file, source })?;
            config.num_replicas = self.stream_replicas;
            let info = self
                .js
                .create_or_update_stream(config)
                .await
                .map_err(js_err)?;
            done.push(format!("stream {}", info.config.name));
        }
        let config = self.sync_consumer_config()?;
        let name = config.durable_name.clone().unwrap_or_default();
        let stream = self
            .js
            .get_stream(self.subjects.events_stream())
            .await
            .map_err(js_err)?;
        match stream.create_consumer(config.clone()).await {
            Ok(_) => {}
            // It exists with another configuration: bring it up to date.
            Err(_) => {
                stream.update_consumer(config).await.map_err(js_err)?;
            }
        }
        done.push(format!("consumer {name}"));
        Ok(done)
    }

    /// The shared consumer's configuration: `nats/sync.consumer.json` over the defaults.
    pub fn sync_consumer_config(&self) -> Result<jetstream::consumer::pull::Config, BrokerError> {
        let definition = |source| BrokerError::Definition {
            file: "sync.consumer.json",
            source,
        };
        let mut config = serde_json::to_value(jetstream::consumer::pull::Config::default())
            .map_err(definition)?;
        if let (Some(base), serde_json::Value::Object(file)) = (
            config.as_object_mut(),
            self.rewrite(SYNC_CONSUMER, "sync.consumer.json")?,
        ) {
            base.extend(file);
        }
        serde_json::from_value(config).map_err(definition)
    }

    /// The definitions say `ttfd`; this installation may use another prefix.
    fn rewrite(&self, text: &str, file: &'static str) -> Result<serde_json::Value, BrokerError> {
        let mut value: serde_json::Value = serde_json::from_str(text)
            .map_err(|source| BrokerError::Definition { file, source })?;
        let prefix = self.subjects.prefix();
        rewrite_strings(&mut value, &|s| {
            if let Some(rest) = s.strip_prefix("ttfd.") {
                format!("{prefix}.{rest}")
            } else if let Some(rest) = s.strip_prefix("TTFD_") {
                format!("{}_{rest}", prefix.to_uppercase())
            } else if let Some(rest) = s.strip_prefix("ttfd-") {
                format!("{prefix}-{rest}")
            } else {
                s.to_owned()
            }
        });
        Ok(value)
    }

    /// The shared durable consumer of the sync replicas.
    pub async fn sync_consumer(&self) -> Result<PullConsumer, BrokerError> {
        let config = self.sync_consumer_config()?;
        let name = config.durable_name.unwrap_or_default();
        self.js
            .get_consumer_from_stream(name, self.subjects.events_stream())
            .await
            .map_err(js_err)
    }

    /// The events stream's retention: ids older than this can no longer be redelivered.
    /// `None` when the stream keeps messages forever.
    pub async fn events_max_age(&self) -> Result<Option<Duration>, BrokerError> {
        let mut stream = self
            .js
            .get_stream(self.subjects.events_stream())
            .await
            .map_err(js_err)?;
        let info = stream.info().await.map_err(js_err)?;
        Ok((!info.config.max_age.is_zero()).then_some(info.config.max_age))
    }

    /// Sends an event to `<prefix>.events.<platform>.<kind>` with `Nats-Msg-Id` = its id.
    /// The returned future resolves when JetStream has stored it.
    pub async fn publish_event(&self, event: &Event) -> Result<Pending, BrokerError> {
        let subject = self
            .subjects
            .event(event.identity.platform.as_str(), event.kind());
        self.publish_raw(subject, event.id.as_str(), Bytes::from(wire::encode(event)))
            .await
    }

    /// Publishes `event` until JetStream has stored it, retrying with `backoff` (JetStream
    /// deduplicates by id, so a retry after an unknown outcome is safe). After a failure,
    /// it gives up when `give_up` resolves (the first try always runs to its end).
    /// `on_retry` hears each failure and the delay before the next try. The one
    /// publish-until-stored of the platform publishers.
    pub async fn publish_until_stored(
        &self,
        event: &Event,
        backoff: ExponentialBuilder,
        give_up: impl Future<Output = ()>,
        mut on_retry: impl FnMut(&BrokerError, Duration),
    ) -> Result<(), BrokerError> {
        let last = std::sync::Mutex::new(None::<String>);
        let failed = tokio::sync::Notify::new();
        let stored = (|| async { self.publish_event(event).await?.await.map_err(js_err) })
            .retry(backoff)
            .notify(|e, delay| {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                failed.notify_one();
                on_retry(e, delay);
            });
        tokio::select! {
            biased;
            r = stored => r.map(drop),
            () = async { failed.notified().await; give_up.await } => {
                let last = last.lock().unwrap_or_else(|p| p.into_inner()).take();
                Err(BrokerError::NotStored(last.unwrap_or_else(|| "no answer yet".into())))
            }
        }
    }

    /// Sends bytes as they are (for outside publishers' shapes and for tests of bad input),
    /// signed when this process signs. A duplicate on the events stream is sent once
    /// more after the window when this broker sends second copies.
    pub async fn publish_raw(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Pending, BrokerError> {
        let again = self
            .second_copies
            .as_ref()
            .filter(|_| self.subjects.parse_event(&subject).is_some())
            .map(|copies| SecondCopy {
                broker: self.clone(),
                copies: Arc::clone(copies),
                subject: subject.clone(),
                msg_id: msg_id.to_owned(),
                payload: payload.clone(),
            });
        let ack = self.send(subject, msg_id, payload).await?;
        Ok(Pending::new(ack, again))
    }

    /// One publish, signed when this process signs.
    async fn send(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<PublishAckFuture, BrokerError> {
        let mut message = PublishMessage::build().message_id(msg_id);
        if let Some(signature) = self.trust.signature(&subject, msg_id, &payload) {
            message = message.header(trust::SIGNATURE, signature.as_str());
        }
        self.js
            .send_publish(subject, message.payload(payload))
            .await
            .map_err(js_err)
    }
}

fn rewrite_strings(v: &mut serde_json::Value, f: &dyn Fn(&str) -> String) {
    match v {
        serde_json::Value::String(s) => *s = f(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| rewrite_strings(i, f)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| rewrite_strings(i, f)),
        _ => {}
    }
}
