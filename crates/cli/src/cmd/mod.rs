//! One module per command.

pub mod accept;
pub mod backup;
pub mod daemon;
pub mod doctor;
pub mod drill;
pub mod guard;
pub mod init;
pub mod list;
pub mod prune;
pub mod rekey;
pub mod restore;
pub mod status;
pub mod verify;
