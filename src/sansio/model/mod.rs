//! The member model: an address with upsync's attributes, a set of them,
//! and the update a sync machine hands out when the set changes.

pub mod locality;
pub mod member;
pub mod member_set;
pub mod update;
