//! A queue bound to an exchange on the local RabbitMQ, read by a consumer with a small
//! prefetch (unacknowledged until the test takes them, so nothing is lost): what a consumer
//! receives, with its properties. Not `basic.get`: amqprs's get path lost a response under the
//! full suite's load (its dispatcher panicked on a responder whose caller was gone), and the
//! consumer path is the one real consumers use.

use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, Channel, ConsumerMessage,
    ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments, QueueDeclareArguments,
    QueueDeleteArguments, QueueUnbindArguments,
};
pub use amqprs::{BasicProperties, FieldTable, FieldValue};
use walrelay::sink::{AmqpUrl, Link};

use super::amqp_url;

/// Queue arguments (`x-queue-type`, `x-max-length`, …) from pairs.
pub fn queue_args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert((*k).try_into().unwrap(), v.clone());
    }
    t
}

/// A string argument or header value.
pub fn text(v: &str) -> FieldValue {
    FieldValue::S(v.try_into().unwrap())
}

/// Connects to the broker at `url` (walrelay's own connection code, bounded).
pub async fn connect_amqp(url: &str, name: &str) -> Link {
    let url = AmqpUrl::parse(url).expect("an AMQP URL");
    Link::open(&url, name, Duration::from_secs(10))
        .await
        .expect("connect to RabbitMQ")
        .0
}

/// A queue bound to an exchange on the local RabbitMQ.
pub struct TestQueue {
    pub channel: Channel,
    pub link: Link,
    pub exchange: String,
    pub queue: String,
    pub url: String,
    /// Started by the first `get`, so a queue nobody reads keeps its messages.
    deliveries: tokio::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ConsumerMessage>>>,
}

/// A message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub message_id: String,
    pub body: serde_json::Value,
    pub properties: BasicProperties,
}

impl Received {
    /// A header's value as text (strings as they are, numbers in decimal).
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers()?;
        let key: amqprs::FieldName = name.try_into().ok()?;
        match headers.as_ref().get(&key)? {
            FieldValue::S(s) => Some(String::from(s.clone())),
            FieldValue::l(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

impl TestQueue {
    /// Declares `exchange` (durable topic) and a queue bound with `binding` (None: no binding).
    pub async fn new(exchange: &str, binding: Option<&str>) -> TestQueue {
        TestQueue::on(amqp_url(), exchange, binding, FieldTable::new()).await
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
        // `TEST_QUEUE_TYPE=quorum` (scripts/rabbitmq-matrix.sh) makes every queue a
        // test declares without arguments of its own a quorum queue. Not `WALRELAY_*`:
        // walrelay refuses unknown variables of its own prefix, and children inherit this.
        let mut args = args;
        if args.as_ref().is_empty()
            && let Ok(kind) = std::env::var("TEST_QUEUE_TYPE")
        {
            args = queue_args(&[("x-queue-type", text(&kind))]);
        }
        let link = connect_amqp(url, "walrelay test queue").await;
        let channel = link.channel().await.unwrap();
        channel
            .exchange_declare(
                ExchangeDeclareArguments::new(exchange, "topic")
                    .durable(true)
                    .finish(),
            )
            .await
            .unwrap();
        let queue = queue.to_owned();
        channel
            .queue_declare(
                QueueDeclareArguments::durable_client_named(&queue)
                    .arguments(args)
                    .finish(),
            )
            .await
            .unwrap();
        let q = TestQueue {
            channel,
            link,
            exchange: exchange.to_owned(),
            queue,
            url: url.to_owned(),
            deliveries: tokio::sync::Mutex::new(None),
        };
        if let Some(b) = binding {
            q.bind(b).await;
        }
        q
    }

    pub async fn bind(&self, key: &str) {
        self.channel
            .queue_bind(QueueBindArguments::new(&self.queue, &self.exchange, key))
            .await
            .unwrap();
    }

    pub async fn unbind(&self, key: &str) {
        self.channel
            .queue_unbind(QueueUnbindArguments::new(&self.queue, &self.exchange, key))
            .await
            .unwrap();
    }

    /// Deletes the queue (the exchange stays).
    pub async fn delete_queue(&self) {
        let _ = self
            .channel
            .queue_delete(QueueDeleteArguments::new(&self.queue))
            .await;
    }

    /// Declares the exchange (durable topic) again, e.g. after `delete_exchange`.
    pub async fn declare_exchange(&self) {
        self.channel
            .exchange_declare(
                ExchangeDeclareArguments::new(&self.exchange, "topic")
                    .durable(true)
                    .finish(),
            )
            .await
            .unwrap();
    }

    /// Deletes the exchange (the queue stays).
    pub async fn delete_exchange(&self) {
        self.channel
            .exchange_delete(ExchangeDeleteArguments::new(&self.exchange))
            .await
            .unwrap();
    }

    /// Takes one message if any (waits briefly for the broker to deliver it).
    pub async fn get(&self) -> Option<Received> {
        let mut deliveries = self.deliveries.lock().await;
        if deliveries.is_none() {
            self.channel
                .basic_qos(BasicQosArguments::new(0, 64, false))
                .await
                .unwrap();
            let args = BasicConsumeArguments::new(&self.queue, "")
                .manual_ack(true)
                .finish();
            let (_tag, rx) = self.channel.basic_consume_rx(args).await.unwrap();
            *deliveries = Some(rx);
        }
        let rx = deliveries.as_mut().unwrap();
        let m = match tokio::time::timeout(Duration::from_millis(25), rx.recv()).await {
            Err(_) => return None,
            Ok(Some(m)) => m,
            Ok(None) => panic!(
                "the consumer of {} ended: {:?}",
                self.queue,
                self.link.last_close()
            ),
        };
        let (deliver, properties, content) = (
            m.deliver.expect("a delivery"),
            m.basic_properties.expect("properties"),
            m.content.expect("a body"),
        );
        self.channel
            .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
            .await
            .unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&content).expect("message body is JSON");
        Some(Received {
            routing_key: deliver.routing_key().clone(),
            message_id: properties.message_id().cloned().unwrap_or_default(),
            body,
            properties,
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

    /// Messages the broker holds ready for this queue (not counting those delivered and not
    /// yet taken).
    pub async fn ready(&self) -> u32 {
        let mut args = QueueDeclareArguments::durable_client_named(&self.queue);
        args.passive(true);
        self.channel
            .queue_declare(args.finish())
            .await
            .unwrap()
            .map_or(0, |(_, ready, _)| ready)
    }

    /// Everything the queue holds: drains until the broker has no message ready and nothing
    /// more arrives for `quiet`. Not a quiet spell alone: a pause of the broker or of this
    /// machine longer than it would end the reading early (it did: 11,027 of 198,750 read).
    pub async fn drain_all(&self, quiet: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "{} still had messages ready after 10 minutes of reading",
                self.queue
            );
            let more = self.drain(quiet).await;
            let done = more.is_empty() && self.ready().await == 0;
            got.extend(more);
            if done {
                // Delivered before the count was taken, not read yet: they arrive now.
                got.extend(self.drain(quiet).await);
                return got;
            }
        }
    }

    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(QueueDeleteArguments::new(&self.queue))
            .await;
        let _ = self
            .channel
            .exchange_delete(ExchangeDeleteArguments::new(&self.exchange))
            .await;
        self.link.close().await;
    }
}
