//! Every rule of an ESP32 over-the-air update over BLE, with no I/O.
//!
//! This crate is `no_std` and allocates nothing (but for `client::compress`, the host's
//! compressor, behind the `compress` feature). It never touches a radio, a clock or a flash
//! chip itself: the firmware, the host CLI and the virtual ESP32 feed it what happened (a GATT
//! write arrived, the link dropped, time passed) and carry out what it asks (send this
//! notification, reboot). Flash is reached only through the `embedded_storage::nor_flash`
//! traits, implemented by `esp_storage::FlashStorage` on the chip and by the virtual ESP32 on
//! the host. So the exact same code runs on the device, in the tests and in the simulator.
//!
//! - [`protocol`]: the GATT API (UUIDs), the seed's legacy opcodes and the fast protocol's wire
//!   format, with the one table of refusal reasons.
//! - [`esp`]: ESP-IDF's partition table, otadata, bootloader rules and app image format.
//! - [`manifest`]: signed manifests, which a device that trusts a key needs before it writes.
//! - [`device`]: the update engine a device runs.
//! - [`client`]: the sender a host runs, for either protocol.
#![no_std]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "compress")]
extern crate alloc;

pub mod client;
pub mod device;
pub mod esp;
pub mod manifest;
pub mod protocol;
pub mod time;
