//! Empty library target so that the agent can name this crate as a build
//! dependency (cargo then rebuilds the agent when the program changes).
#![no_std]
