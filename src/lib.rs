//! Herald: a realtime status and presence server that speaks Nakama's
//! realtime protocol, built on a sharded, lock-free fan-out engine.
//!
//! Layout, from the wire inwards:
//! * [`transport`]: the HTTP listener, REST endpoints, websocket upgrade,
//!   frame reader and the per-connection writer.
//! * [`protocol`]: the envelope model and its JSON and protobuf codecs.
//! * [`engine`]: shards, the follow graph and fan-out.
//! * [`auth`]: session tokens and the embedded account store.
//! * [`admin`]: the admin listener: metrics, health, the backend API.
//! * [`config`]: flags, environment variables, the config file and defaults.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod ids;
pub mod protocol;
pub mod server;
pub mod transport;
