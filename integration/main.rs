//! The integration suite: every test starts the real `egress-engine` binary (and, for the fleet,
//! a real redis-server) on free loopback ports, drives it over HTTP, and decodes what it recorded.

mod admission;
mod api;
mod cli;
mod common;
mod conformance;
mod costs;
mod dashboard;
mod degraded;
mod delivery;
mod egress;
mod events;
mod fleet;
mod health;
mod history;
mod outputs;
mod overload;
mod placement;
mod producers;
mod request_targets;
mod rooms;
mod s3;
mod safety;
mod secrets;
mod sentinel;
mod sources;
mod stores;
mod stream_changes;
mod web;
mod web_filter;
mod webdriver;
mod webhooks_tls;
mod webrtc;
