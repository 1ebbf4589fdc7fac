//! The core's error type. Each variant says which AMQP reply code it stands
//! for, since AMQP has the richest error vocabulary; other adapters map the
//! variants to their own errors (MQTT reason codes, STOMP `ERROR`, NATS
//! `-ERR`, HTTP status).

use switchyard_model::{AddressError, DeliveryTag};

/// Errors from broker operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A queue or exchange does not exist (AMQP 404 NOT_FOUND).
    #[error("no {kind} '{name}'")]
    NotFound { kind: &'static str, name: String },
    /// The request conflicts with existing state, e.g. a redeclare with other
    /// arguments, delete-if-empty on a non-empty queue (AMQP 406).
    #[error("{0}")]
    PreconditionFailed(String),
    /// An exclusive queue owned by another connection (AMQP 405).
    #[error("{0}")]
    ResourceLocked(String),
    /// Not allowed, e.g. declaring an `amq.`-reserved name, or an ACL denial
    /// (AMQP 403).
    #[error("{0}")]
    AccessRefused(String),
    /// A limit of the broker is reached (AMQP 506 RESOURCE_ERROR).
    #[error("{0}")]
    ResourceLimit(String),
    /// A malformed argument (AMQP 406 PRECONDITION_FAILED for arguments).
    #[error("{0}")]
    InvalidArgument(String),
    /// An ack or nack for a delivery tag the consumer does not hold (AMQP
    /// 406: "unknown delivery tag").
    #[error("unknown delivery tag {0}")]
    UnknownDeliveryTag(DeliveryTag),
    /// The consumer does not exist (or was cancelled).
    #[error("unknown consumer")]
    UnknownConsumer,
    /// The message is larger than the broker accepts.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    /// An invalid address or filter.
    #[error("invalid address: {0}")]
    Address(#[from] AddressError),
    /// The operation needs a transaction and none is open, or the reverse.
    #[error("{0}")]
    Transaction(String),
    /// The broker is shutting down.
    #[error("broker is shutting down")]
    ShuttingDown,
    /// The durable store failed (AMQP 541 INTERNAL_ERROR). A failed sync is
    /// fatal to the store: persistent messages are refused from then on.
    #[error("storage error: {0}")]
    Storage(String),
}

impl CoreError {
    pub(crate) fn not_found(kind: &'static str, name: &str) -> Self {
        CoreError::NotFound {
            kind,
            name: name.to_owned(),
        }
    }

    /// The AMQP 0-9-1 reply code this error stands for.
    pub fn amqp_reply_code(&self) -> u16 {
        match self {
            CoreError::NotFound { .. } => 404,
            CoreError::ResourceLocked(_) => 405,
            CoreError::AccessRefused(_) => 403,
            CoreError::ResourceLimit(_) => 506,
            CoreError::ShuttingDown => 320,
            CoreError::Storage(_) => 541,
            CoreError::PreconditionFailed(_)
            | CoreError::InvalidArgument(_)
            | CoreError::UnknownDeliveryTag(_)
            | CoreError::UnknownConsumer
            | CoreError::MessageTooLarge { .. }
            | CoreError::Address(_)
            | CoreError::Transaction(_) => 406,
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
