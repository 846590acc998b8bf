//! Transport (PLACEHOLDER): the HTTP listener, websocket upgrade and writers.

pub mod rest;
