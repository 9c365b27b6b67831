//! Benchmarks of the BLE OTA protocols: `cargo xtask bench`.
//!
//! - [`model`]: modelled update time of the seed's protocol, ours and [`reference`] patterns
//!   of the best-known alternatives, all through the same [`ble_link_model::Link`] and the
//!   same flash timing, against the link's and the flash's ceilings.
//! - [`device::engine_update`]: the device engine's host CPU work, timed by the criterion
//!   bench `benches/engine.rs` against SHA-256 alone.
//! - [`report`]: BENCHMARKS.md, the JSON file and the SVG chart.

#![forbid(unsafe_code)]

pub mod device;
pub mod flash;
pub mod model;
pub mod realstack;
pub mod reference;
pub mod report;
