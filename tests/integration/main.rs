//! Every integration suite in one test binary: each module below drives a
//! real Herald (in process on 127.0.0.1:0, or the `herald` binary as a child
//! process) over real sockets. One crate instead of one per file, because
//! linking a release test binary is the slowest step of the test command.
//!
//! The fault-injection suite stays apart (`tests/fault_injection.rs`): it
//! needs the `fault-injection` feature, which no other build may carry.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod config_file;
mod follow;
mod frames;
mod handshake;
mod keepalive;
mod limits;
mod mass_disconnect;
mod postgres;
mod process;
mod protobuf;
mod rest;
mod slow_consumer;
mod status;
mod tls;
