//! RabbitMQ Streams (issue 16, in progress): what the stream sink needs that does not depend on
//! the broker. So far: publishing ids and producer names for broker-side deduplication.

pub mod publishing_id;
