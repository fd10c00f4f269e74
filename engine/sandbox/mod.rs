//! `tkgops sandbox`: config repository, emulators, moto and the bot wired together on loopback.

pub mod moto;
