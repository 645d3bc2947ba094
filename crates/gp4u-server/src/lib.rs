//! The GP4U control plane (`gp4u server`): HTTP API, middleware, chambers, outbox relay.
//!
//! Layers, outside in: [`app::serve`] (listener, shutdown, background tasks) → the router with
//! its middleware ([`auth`]: token check before any database access) → handlers in [`routes`]
//! → the pure rules of `gp4u-core` → `gp4u-store`.

pub mod app;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod console;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod obsidian;
pub mod openapi;
pub mod placement;
pub mod route_table;
pub mod routes;
pub mod secret;
pub mod settlement;
pub mod state;
pub mod tutela;
pub mod views;
pub mod visibility;

pub use app::{Server, build_router, serve};
pub use config::{ServerArgs, ServerSettings};
pub use state::AppState;
