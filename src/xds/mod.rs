//! The control thread's work besides admin: DNS for STRICT_DNS/LOGICAL_DNS clusters today
//! (the ADS client joins here), always publishing whole snapshots.

pub mod dns;
