//! Shared helpers, one room each: [`app`] (a sidecar in process), [`nats`], [`postgres`], [`process`] (the
//! binary as a child, HTTP, waiting), [`tokens`] (hand-made tokens, status checks).
pub mod app;
pub mod dpop;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod services;
pub mod store_proxy;
pub mod tokens;

pub use app::*;
pub use nats::*;
pub use postgres::*;
pub use process::*;
pub use store_proxy::*;
pub use tokens::*;

/// Generates one `#[tokio::test]` per backend for each scenario function.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::require!(Postgres);
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// [`on_every_backend!`], and on the core's memory store as well (the rules every store
/// backend must keep; `conformance.rs` proves the stores alike below the API).
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        on_every_backend!($($name),*);
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Memory).await
                }
            )*
        }
    };
}
