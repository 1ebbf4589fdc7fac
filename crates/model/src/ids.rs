//! Id newtypes. Ids are never plain integers at an API boundary, so a queue id
//! cannot be passed where a consumer id is expected.

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// Broker-assigned message id: unique and monotonic per node. `0` means
    /// "not assigned yet" (a message an adapter built but has not published).
    MessageId
);
id_newtype!(
    /// One accepted client connection (or an internal publisher).
    ConnId
);
id_newtype!(
    /// One consumer attached to a queue.
    ConsumerId
);
id_newtype!(
    /// One queue (durable or not), unique for the life of the process.
    QueueId
);
id_newtype!(
    /// Identifies one delivery attempt of a message to a consumer; unique per
    /// queue and increasing in delivery order. Acks and nacks name it.
    DeliveryTag
);
