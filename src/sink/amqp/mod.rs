//! The AMQP 0-9-1 sink on amqprs: one connection and its callbacks turned into signals
//! ([`link`]), a confirm-mode publisher with `mandatory` ([`publisher`]), topic matching
//! ([`topic`]) and the wait for a binding after an unroutable message ([`routable`]).

pub mod link;
mod nodes;
pub mod publisher;
pub mod routable;
pub mod topic;

pub use link::{AmqpError, BrokerState, Link, Signal};
pub use publisher::{Answer, Publisher};
