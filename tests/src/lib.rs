//! End-to-end harness for microcore.
//!
//! The contracts that matter most — HTTP over NATS, discovery, schema
//! merging, event publishing, graceful shutdown — live *between* processes,
//! so this harness tests them between processes: it starts a private
//! `nats-server`, gives each test its own Postgres database, builds and runs
//! the real `gateway` and service binaries, and talks to them the way
//! clients and operators do (HTTP through the gateway, plain NATS for events
//! and the micro protocol). Nothing is mocked.
//!
//! Every test builds its own [`System`], so tests share nothing and run in
//! parallel. Every wait polls a condition against a deadline
//! ([`wait::poll`]) and, when it gives up, panics with the tail of the logs
//! of every process involved.
//!
//! ```no_run
//! # async fn example() {
//! use microcore_e2e::System;
//! use reqwest::StatusCode;
//!
//! let (system, _products) = System::with_products().await;
//! let reply = system.http().get("/products").await;
//! let data = reply.expect_success(StatusCode::OK);
//! assert!(data.as_array().is_some());
//! # }
//! ```

pub mod bare_hop;
pub mod binaries;
pub mod db;
pub mod embedded;
pub mod env_template;
pub mod events;
pub mod http;
pub mod logs;
pub mod micro;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod sse;
pub mod system;
pub mod wait;

pub use binaries::{binary, try_binary};
pub use db::TestDb;
pub use embedded::Embedded;
pub use events::Streams;
pub use http::{Account, HttpClient, Reply};
pub use nats::NatsServer;
pub use process::{Launcher, ServiceProcess};
pub use sse::{EventStream, SseEvent};
pub use system::{Gateway, PRODUCTS, PRODUCTS_TABLE, SHOP, ServiceInstance, System, SystemBuilder};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The listener is closed before the port is handed out, so another process
/// may take it first; callers that bind it in a child process retry with a
/// new port when the child reports the address in use.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("the loopback interface has free ports")
}

/// The HTTP face of a running system, whichever its topology: the gateway
/// of a [`System`] or an [`Embedded`] process. Suites written against it
/// run on both.
pub trait Front {
    fn http(&self) -> &HttpClient;

    /// Panics with `message` and the logs of the processes behind.
    fn fail(&self, message: impl std::fmt::Display) -> !;
}

impl Front for System {
    fn http(&self) -> &HttpClient {
        System::http(self)
    }

    fn fail(&self, message: impl std::fmt::Display) -> ! {
        System::fail(self, message)
    }
}

impl Front for Embedded {
    fn http(&self) -> &HttpClient {
        Embedded::http(self)
    }

    fn fail(&self, message: impl std::fmt::Display) -> ! {
        Embedded::fail(self, message)
    }
}

/// Runs each named flow — an `async fn(&impl Front)` of the calling test
/// file — once against the distributed system and once against the
/// embedded process, so one suite keeps both topologies honest. The file
/// provides `distributed() -> (System, services)` (the services live for
/// the test) and `embedded() -> Embedded`.
#[macro_export]
macro_rules! on_both_topologies {
    ($($flow:ident),* $(,)?) => {
        mod distributed {
            $(
                #[tokio::test]
                async fn $flow() {
                    let (system, _services) = super::distributed().await;
                    super::$flow(&system).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $flow() {
                    super::$flow(&super::embedded().await).await;
                }
            )*
        }
    };
}
