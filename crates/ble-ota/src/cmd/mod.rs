//! One module per subcommand.

pub mod control;
pub mod demo;
pub mod device;
pub mod flash;
pub mod image;
pub mod scan;
pub mod sign;
pub mod sim;
pub mod web;
