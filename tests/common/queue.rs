//! A queue bound to an exchange on the local RabbitMQ, drained with `basic.get`: what a
//! consumer receives, with its properties.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::AMQP_URL;

/// A queue bound to an exchange on the local RabbitMQ, drained with basic.get.
pub struct TestQueue {
    pub channel: Channel,
    pub conn: Connection,
    pub exchange: String,
    pub queue: String,
    pub url: String,
}

/// A message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub message_id: String,
    pub body: serde_json::Value,
    pub properties: BasicProperties,
}

impl TestQueue {
    /// Declares `exchange` (durable topic) and a queue bound with `binding` (None: no binding).
    pub async fn new(exchange: &str, binding: Option<&str>) -> TestQueue {
        TestQueue::on(AMQP_URL, exchange, binding, FieldTable::default()).await
    }

    /// Like `new`, on the broker at `url`, with queue arguments (e.g. `x-queue-type`).
    pub async fn on(
        url: &str,
        exchange: &str,
        binding: Option<&str>,
        args: FieldTable,
    ) -> TestQueue {
        TestQueue::named(url, exchange, &format!("{exchange}_q"), binding, args).await
    }

    /// A queue of its own name on `exchange` (several queues on one exchange).
    pub async fn named(
        url: &str,
        exchange: &str,
        queue: &str,
        binding: Option<&str>,
        args: FieldTable,
    ) -> TestQueue {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = queue.to_owned();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
        let q = TestQueue {
            channel,
            conn,
            exchange: exchange.to_owned(),
            queue,
            url: url.to_owned(),
        };
        if let Some(b) = binding {
            q.bind(b).await;
        }
        q
    }

    pub async fn bind(&self, key: &str) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    pub async fn unbind(&self, key: &str) {
        self.channel
            .queue_unbind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                key.into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Takes one message if any.
    pub async fn get(&self) -> Option<Received> {
        let msg = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()?;
        let body: serde_json::Value =
            serde_json::from_slice(&msg.delivery.data).expect("message body is JSON");
        Some(Received {
            routing_key: msg.delivery.routing_key.to_string(),
            message_id: msg
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            body,
            properties: msg.delivery.properties.clone(),
        })
    }

    /// Collects messages until `n` arrived (panics after `timeout`).
    pub async fn take(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < n {
            match self.get().await {
                Some(m) => got.push(m),
                None => {
                    assert!(
                        start.elapsed() < timeout,
                        "timed out: got {} of {n} messages",
                        got.len()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        got
    }

    /// Collects messages until `n` distinct ids arrived (panics after `timeout`) and returns
    /// the first delivery of each, in order. A replay (at-least-once, e.g. across a session
    /// restart) must carry the same id and body as the first delivery.
    pub async fn take_distinct(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut first: Vec<Received> = Vec::new();
        let start = Instant::now();
        while first.len() < n {
            match self.get().await {
                Some(m) => match first.iter().find(|f| f.message_id == m.message_id) {
                    Some(f) => assert_eq!(f.body, m.body, "a replay differs from the original"),
                    None => first.push(m),
                },
                None => {
                    assert!(
                        start.elapsed() < timeout,
                        "timed out: got {} of {n} distinct messages",
                        first.len()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        first
    }

    /// Drains until the queue stays empty for `quiet`.
    pub async fn drain(&self, quiet: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            match self.get().await {
                Some(m) => {
                    got.push(m);
                    last = Instant::now();
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        got
    }

    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }
}
