//! The integration tests, one binary (compiled and linked once): each module drives the
//! real roles against real PostgreSQL and NATS, with fake Discord, Telegram and OAuth
//! servers on localhost where a platform is involved. `common` is the harness.

mod common;

mod browser;
mod cards;
mod discord;
mod import;
mod links;
mod moderation;
mod observe;
mod pipeline;
mod privacy;
mod replay;
mod seasons;
mod telegram;
mod trust;
mod web;
